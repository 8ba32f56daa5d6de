"""The drill's web view (`cyberdial drill --web`, `cyberdial watch`); assets in static/."""
