"""One module per `cyberdial` command group; each exposes `register(subparsers)`."""
