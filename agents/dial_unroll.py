"""DIAL's message path over whole episodes, with its backward pass written out.

The replay's recurrence (agents/dial.py, `DialLearner.unroll`) is, per step and for
every agent at once: the peers' last messages join the embedded inputs, a GRU step, the
head's hidden layer, the message logits and the DRU with the noise that acted. Left to
autograd that is some 20 operations forward and 35 backward per step, each on a few
dozen rows, so the update's time went to the per-operation cost, not to arithmetic.

`MessagePath` is that recurrence as one autograd function: the forward pass keeps what
the backward pass needs; the backward pass runs through time once for the gradients
that must be stepped (hidden state, messages, inputs) and finds every weight's gradient
afterwards as one product over all steps. The same values as the step-by-step network
up to summation order (tests/test_unroll.py checks the Q-values, messages and every
parameter's gradient against the network's own per-step `forward`).

The GRU step is torch's `gru_cell` (r, z, n gates; `h' = n + z·(h − n)`); the head's
hidden layer is a ReLU layer; the DRU is `sigmoid(logit + σ·noise)`, times the gate.
"""

from __future__ import annotations

from typing import Any

import torch


class MessagePath(torch.autograd.Function):
    """(features, logits, messages), each (T, N, A, ·), of a replay with messages.

    Inputs: `inputs` (T, N, A·H) the embedded inputs with the message embedding's bias;
    `noise` (T, N, A, bits) the DRU noise already scaled by σ; `gates` (T, N, A, 1) or
    None; `heard` (A·bits, A·H) the message embedding laid out per sender and receiver
    (`DialNetwork.heard`); the GRU's four parameters; the head's first layer; the head's
    message rows; `probe` (T, N, A, bits) or None, added to the logits (zeros: its
    gradient is the logits' gradient, for tests that look there); `keep`: whether a
    backward pass will follow (the target network's replay needs none).

    Every step writes into tensors allocated once for the whole replay, so nothing is
    stacked afterwards and the backward pass reads each step's values as views.
    """

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, noise: torch.Tensor,
                gates: torch.Tensor | None, heard: torch.Tensor,
                weight_ih: torch.Tensor, weight_hh: torch.Tensor,
                bias_ih: torch.Tensor, bias_hh: torch.Tensor,
                weight_1: torch.Tensor, bias_1: torch.Tensor,
                weight_m: torch.Tensor, bias_m: torch.Tensor,
                probe: torch.Tensor | None, keep: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        steps, n, _ = inputs.shape
        agents, bits = noise.shape[2], noise.shape[3]
        size = weight_hh.shape[1]
        rows, split = n * agents, 2 * size
        w_ih, w_hh, w_1, w_m = weight_ih.t(), weight_hh.t(), weight_1.t(), weight_m.t()
        new_empty = inputs.new_empty
        xs = new_empty(steps, n, agents * size)  # the GRU's inputs (after the ReLU)
        hiddens = new_empty(steps + 1, rows, size)  # [t]: the state step t starts from
        hiddens[0] = 0
        gh = new_empty(steps, rows, 3 * size)  # the hidden state's products (+ bias)
        rz = new_empty(steps, rows, split)  # reset and update gates
        new = new_empty(steps, rows, size)  # the candidate state
        features = new_empty(steps, rows, size)  # the head's hidden layer
        logits = new_empty(steps, n, agents, bits)
        sigmas = new_empty(steps, n, agents, bits)  # the DRU's outputs before the gate
        messages = new_empty(steps, n, agents, bits) if gates is not None else sigmas
        sent = inputs.new_zeros(n, agents * bits)
        for t in range(steps):
            x = torch.addmm(inputs[t], sent, heard, out=xs[t]).clamp_min_(0).view(rows, size)
            gi = torch.addmm(bias_ih, x, w_ih)
            torch.addmm(bias_hh, hiddens[t], w_hh, out=gh[t])
            torch.add(gi[:, :split], gh[t, :, :split], out=rz[t]).sigmoid_()
            torch.addcmul(gi[:, split:], rz[t, :, :size], gh[t, :, split:], out=new[t]).tanh_()
            # h' = n + z·(h − n), as torch's gru_cell
            torch.sub(hiddens[t], new[t], out=hiddens[t + 1]).mul_(rz[t, :, size:]).add_(new[t])
            torch.addmm(bias_1, hiddens[t + 1], w_1, out=features[t]).clamp_min_(0)
            torch.addmm(bias_m, features[t], w_m, out=logits[t].view(rows, bits))
            if probe is not None:
                logits[t] += probe[t]
            torch.add(logits[t], noise[t], out=sigmas[t]).sigmoid_()
            if gates is not None:
                torch.mul(sigmas[t], gates[t], out=messages[t])
            sent = messages[t].view(n, agents * bits)
        ctx.keep = keep
        if keep:
            ctx.save_for_backward(xs, hiddens, gh, rz, new, features, sigmas, messages,
                                  gates if gates is not None else inputs.new_zeros(0),
                                  heard, weight_ih, weight_hh, weight_1, weight_m)
            ctx.has_gates, ctx.has_probe = gates is not None, probe is not None
        return features.view(steps, n, agents, size), logits, messages

    @staticmethod
    def backward(ctx: Any, grad_features: torch.Tensor | None,
                 grad_logits: torch.Tensor | None, grad_messages: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, ...]:
        if not ctx.keep:
            raise RuntimeError("MessagePath ran without keeping what its backward needs")
        (xs, hiddens, gh, rz, new, features, sigmas, messages, gates, heard, weight_ih,
         weight_hh, weight_1, weight_m) = ctx.saved_tensors
        steps, rows, size = features.shape
        n, agents, bits = sigmas.shape[1:]
        split = 2 * size
        # Everything that does not depend on the gradient flowing back, for all steps.
        if grad_features is None:
            grad_features = features.new_zeros(features.shape)
        grad_features = grad_features.reshape(steps, rows, size)
        outside = (grad_messages if grad_messages is not None
                   else sigmas.new_zeros(sigmas.shape))  # (T, N, A, bits)
        if ctx.has_gates:
            outside = outside * gates
        dsigma = sigmas * (1 - sigmas)
        r, z = rz[..., :size], rz[..., size:].contiguous()
        drz = rz * (1 - rz)
        to_new = (1 - z) * (1 - new * new)  # dh'/d(candidate's input), through tanh
        to_r = gh[..., split:] * drz[..., :size]  # d(candidate's input)/dr, through r's sigmoid
        to_z = (hiddens[:-1] - new) * drz[..., size:]  # dh'/dz, through z's sigmoid
        # Per step, the gates' gradients (r, z, n) are the hidden state's gradient times
        # these, and the hidden products' gradients are the gates' times (1, 1, r): one
        # product each on contiguous rows (slices of the gate rows cost ~5x as much).
        to_gates = torch.cat([to_new * to_r, to_z, to_new], dim=2).view(steps, rows, 3, size)
        to_hidden = torch.cat([torch.ones_like(rz), r], dim=2)
        # The ReLUs' masks as floats: a product with a bool tensor converts it each time.
        feature_on, x_on = (features > 0).to(features.dtype), (xs > 0).to(xs.dtype)
        heard_t = heard.t()

        g_gi = features.new_empty(steps, rows, 3 * size)
        g_gh = features.new_empty(steps, rows, 3 * size)
        g_first = features.new_empty(steps, rows, size)
        g_logit = features.new_empty(steps, n, agents, bits)
        g_pre = features.new_empty(xs.shape)  # (T, N, A·H)
        grad_hidden = features.new_zeros(rows, size)
        heard_back: torch.Tensor | None = None  # from the next step's inputs, (N, A, bits)
        for t in range(steps - 1, -1, -1):
            g_sigma = outside[t]
            if heard_back is not None:
                g_sigma = g_sigma + (heard_back * gates[t] if ctx.has_gates else heard_back)
            torch.mul(g_sigma, dsigma[t], out=g_logit[t])
            if grad_logits is not None:
                g_logit[t] += grad_logits[t]
            g_feature = torch.addmm(grad_features[t], g_logit[t].view(rows, bits), weight_m)
            torch.mul(g_feature, feature_on[t], out=g_first[t])
            g_h = torch.addmm(grad_hidden, g_first[t], weight_1)
            torch.mul(g_h[:, None], to_gates[t], out=g_gi[t].view(rows, 3, size))
            torch.mul(g_gi[t], to_hidden[t], out=g_gh[t])
            grad_hidden = torch.addmm(g_h * z[t], g_gh[t], weight_hh)
            torch.mul(torch.mm(g_gi[t], weight_ih).view(n, -1), x_on[t], out=g_pre[t])
            heard_back = (g_pre[t] @ heard_t).view(n, agents, bits)
        # Each weight's gradient: one product over all steps and rows.
        flat_gi, flat_gh = g_gi.view(-1, 3 * size), g_gh.view(-1, 3 * size)
        flat_first, flat_logit = g_first.view(-1, size), g_logit.view(-1, bits)
        grad_heard = (messages[:-1].reshape(-1, agents * bits).t()
                      @ g_pre[1:].reshape(-1, g_pre.shape[-1]))  # step 0 hears nothing
        return (g_pre, None, None, grad_heard,
                flat_gi.t() @ xs.view(-1, size), flat_gh.t() @ hiddens[:-1].reshape(-1, size),
                flat_gi.sum(0), flat_gh.sum(0),
                flat_first.t() @ hiddens[1:].reshape(-1, size), flat_first.sum(0),
                flat_logit.t() @ features.view(-1, size), flat_logit.sum(0),
                g_logit if ctx.has_probe else None, None)
