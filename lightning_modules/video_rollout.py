"""Streaming rollouts of SCD and the causal DiT in token space.

Both functions are generators: given C context frames they yield the U new frames one
at a time, as soon as each is sampled, so a caller can display, time or stop a rollout
frame by frame. They use the project's ODE solvers (`unisep.flow.solve`) on the
velocity of one frame.

Per new frame, SCD costs one encoder pass over that frame's tokens (through the KV
cache) plus T decoder passes over one frame. The causal DiT costs T passes of every
layer over the whole cache, plus one pass that caches the finished frame.

`use_cache=False` recomputes the whole sequence at every call instead, with the
training-time masks. It is slow and exists to check the cached path against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from unisep.flow import apply_guidance, solve
from unisep.lightning_modules.frame_noise import Prediction, output_to_velocity
from unisep.networks.causal_dit import CausalDiT
from unisep.networks.scd import SCDNetwork, next_frame_actions, perturb_context

# Guidance acts at every step of a frame's denoising, as in the SCD reference sampler.
FULL_GUIDANCE_INTERVAL = (0.0, 1.0)


def _check_rollout_inputs(context: Tensor, num_frames: int, actions: Tensor | None, steps: int) -> None:
    if context.ndim != 4 or context.shape[1] < 1:
        raise ValueError(
            f"context must be tokens (batch, frames >= 1, N, C), got {tuple(context.shape)}; a rollout"
            " starts from at least one given frame"
        )
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if actions is not None:
        expected = (context.shape[0], context.shape[1] + num_frames)
        if tuple(actions.shape) != expected:
            raise ValueError(
                f"actions must be (batch, context frames + new frames) = {expected}, got {tuple(actions.shape)}"
            )


def _sample_frame(
    velocity: Callable[[Tensor, Tensor], Tensor],
    context: Tensor,
    solver: str,
    steps: int,
    shift: float,
    generator: torch.Generator | None,
) -> Tensor:
    """Solve the flow ODE of one new frame from fresh noise.

    Args:
        velocity: `velocity(x, t)` of the frame, x (batch, N, C) and t (batch,).
        context: (batch, C, N, channels) context tokens. The noise takes the shape of
            one of its frames, its dtype and its device.
        solver, steps, shift: options of `unisep.flow.solve`.
        generator: random generator of the noise. The noise is drawn on its device, so
            a CPU generator also seeds GPU rollouts.

    Returns:
        (batch, N, channels) tokens of the new frame.
    """
    device = generator.device if generator is not None else context.device
    shape = context[:, 0].shape
    noise = torch.randn(shape, device=device, dtype=context.dtype, generator=generator).to(context.device)
    return solve(velocity, noise, solver, steps=steps, shift=shift)


@torch.no_grad()
def scd_rollout(
    network: SCDNetwork,
    context: Tensor,
    num_frames: int,
    *,
    steps: int = 50,
    guidance_scale: float = 1.0,
    guidance_context_noise: float = 0.05,
    actions: Tensor | None = None,
    solver: str = "euler",
    shift: float = 1.0,
    prediction: Prediction | str = Prediction.VELOCITY,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[Tensor]:
    """Generate frames after `context` with SCD, one frame per iteration.

    Guidance runs the decoder twice per step: with the context, and with the context
    plus N(0, guidance_context_noise^2) noise as the unconditional branch, then
    extrapolates `uncond + scale * (cond - uncond)`. The perturbation is drawn once per
    frame. Actions are not dropped in the unconditional branch.

    Args:
        network: the SCD network (put it in eval mode).
        context: (batch, C, N, channels) clean tokens of the given frames.
        num_frames: U, frames to generate.
        steps: T, solver steps per frame.
        guidance_scale: 1 disables guidance (one decoder pass per step).
        guidance_context_noise: std of the unconditional branch's context noise.
        actions: (batch, C + U) int64 action of every frame, or None.
        solver: "euler" or "heun" (see `unisep.flow.solve`).
        shift: time-grid shift of the solver.
        prediction: what the decoder outputs (see `frame_noise.Prediction`).
        generator: random generator for the initial noise and the context noise.
        use_cache: False re-encodes the whole sequence for every frame (for checks).

    Yields:
        (batch, N, channels) tokens of each new frame, in order.
    """
    _check_rollout_inputs(context, num_frames, actions, steps)
    batch, num_context = context.shape[:2]
    # Entry i is the action of frame i + 1, the frame that the encoder output at i conditions.
    encoder_actions = next_frame_actions(actions)

    frames = [context]
    cache = network.new_cache(batch, num_context + num_frames) if use_cache else None
    if use_cache:
        frame_context = network.extend(context, cache, _slice(encoder_actions, 0, num_context))

    for offset in range(num_frames):
        index = num_context + offset
        if not use_cache:
            history = torch.cat(frames, dim=1)
            frame_context = network.encoder(history, None, _slice(encoder_actions, 0, index))[:, -1]
        frame_actions = None if actions is None else actions[:, index]
        guided = guidance_scale != 1.0
        uncond_context = perturb_context(frame_context, guidance_context_noise, generator) if guided else None

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            if not guided:
                output = network.decoder(x, frame_context, t, frame_actions)
            else:
                both = network.decoder(
                    torch.cat([x, x]),
                    torch.cat([frame_context, uncond_context]),
                    torch.cat([t, t]),
                    None if frame_actions is None else torch.cat([frame_actions, frame_actions]),
                )
                cond, uncond = both.chunk(2)
                # Guidance is linear, so mixing x-predictions equals mixing their velocities.
                output = apply_guidance(cond, uncond, guidance_scale, t, FULL_GUIDANCE_INTERVAL)
            return output_to_velocity(output, x, t, prediction)

        frame = _sample_frame(velocity, context, solver, steps, shift, generator)
        yield frame

        if not use_cache:
            frames.append(frame[:, None])
        elif offset + 1 < num_frames:
            frame_context = network.extend(frame[:, None], cache, _slice(encoder_actions, index, index + 1))


@torch.no_grad()
def causal_dit_rollout(
    network: CausalDiT,
    context: Tensor,
    num_frames: int,
    *,
    steps: int = 50,
    guidance_scale: float = 1.0,
    actions: Tensor | None = None,
    solver: str = "euler",
    shift: float = 1.0,
    prediction: Prediction | str = Prediction.VELOCITY,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[Tensor]:
    """Generate frames after `context` with the causal DiT, one frame per iteration.

    Guidance needs an action-conditioned model: its unconditional branch replaces every
    action by the null action, so the cache stores both branches (batch doubled).

    Args:
        network: the causal DiT (put it in eval mode).
        context: (batch, C, N, channels) clean tokens of the given frames.
        num_frames: U, frames to generate.
        steps: T, solver steps per frame.
        guidance_scale: 1 disables guidance.
        actions: (batch, C + U) int64 action of every frame, or None.
        solver: "euler" or "heun".
        shift: time-grid shift of the solver.
        prediction: what the network outputs (see `frame_noise.Prediction`).
        generator: random generator for the initial noise.
        use_cache: False recomputes the whole sequence at every step (for checks).

    Yields:
        (batch, N, channels) tokens of each new frame, in order.
    """
    _check_rollout_inputs(context, num_frames, actions, steps)
    guided = guidance_scale != 1.0
    if guided and (actions is None or network.num_actions == 0):
        raise ValueError(
            "causal-DiT guidance drops the actions in its unconditional branch, so it needs an"
            " action-conditioned model and actions; use guidance_scale=1.0"
        )
    batch, num_context = context.shape[:2]
    if guided:
        actions = torch.cat([actions, network.conditioning.null_actions(actions)])

    def doubled(x: Tensor) -> Tensor:
        return torch.cat([x, x]) if guided else x

    frames = [doubled(context)]
    cache = network.new_cache(frames[0].shape[0], num_context + num_frames) if use_cache else None
    if use_cache:
        clean = context.new_ones(frames[0].shape[0], num_context)
        network(frames[0], clean, _slice(actions, 0, num_context), cache, commit=True)

    for offset in range(num_frames):
        index = num_context + offset
        step_actions = _slice(actions, index, index + 1)
        history = None if use_cache else torch.cat(frames, dim=1)

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            x_in, t_in = doubled(x)[:, None], doubled(t)[:, None]
            if use_cache:
                v = network(x_in, t_in, step_actions, cache)[:, 0]
            else:
                sequence = torch.cat([history, x_in], dim=1)
                times = torch.cat([t_in.new_ones(history.shape[:2]), t_in], dim=1)
                v = network(sequence, times, _slice(actions, 0, index + 1))[:, -1]
            if guided:
                cond, uncond = v.chunk(2)
                v = apply_guidance(cond, uncond, guidance_scale, t, FULL_GUIDANCE_INTERVAL)
            return output_to_velocity(v, x, t, prediction)

        frame = _sample_frame(velocity, context, solver, steps, shift, generator)
        yield frame

        if not use_cache:
            frames.append(doubled(frame)[:, None])
        elif offset + 1 < num_frames:
            finished = doubled(frame)[:, None]
            network(finished, context.new_ones(finished.shape[:2]), step_actions, cache, commit=True)


def _slice(actions: Tensor | None, start: int, end: int) -> Tensor | None:
    return None if actions is None else actions[:, start:end]
