"""Video rollout evaluation: predict frames after a context and score them against the truth.

For each validation clip the module's `generate()` rolls out `rollout_frames` frames
after the first `context_frames` frames, and the prediction is compared with the
clip's real frames:

- `rollout_psnr`, `rollout_ssim`: PSNR and SSIM (torchmetrics) per predicted frame,
  averaged over frames and clips, on frames scaled to [0, 1];
- `copy_last_psnr`, `copy_last_ssim`: the same for the baseline that repeats the last
  context frame, which any useful predictor must beat;
- `context_mean_psnr`, `context_mean_ssim`: the baseline that predicts the mean of the
  context frames. Blurry predictions score well in PSNR, so on data with large static
  regions (a black canvas) this blur can beat copying the last frame;
- `rollout_psnr_per_frame`: PSNR at each rollout step, which shows the drift;
- `rollout_lpips` when the LPIPS files are given, `rollout_fvd` when an I3D file is
  given. Otherwise `skipped_metrics` records why they were not computed.

At the end of fit it writes `metrics.json` keys, `rollout.png` (per clip: context +
prediction above context + ground truth) and `rollout.gif` (prediction beside ground
truth) into the run folder. With `every_n_epochs > 0` it also logs the scores during
training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from unisep.callbacks.image_grid import make_grid, save_png, to_uint8
from unisep.callbacks.metrics_file import update_metrics_json
from unisep.callbacks.sample_grid import log_image

# PSNR of a frame predicted exactly is infinite; capping it keeps averages finite. 100 dB
# is an MSE of 1e-10 on [0, 1] frames, beyond any real prediction.
MAX_PSNR_DB = 100.0


def frame_scores(prediction: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """PSNR (dB, capped at `MAX_PSNR_DB`) and SSIM of each frame of videos (batch, frames, C, H, W) in [-1, 1].

    Returns:
        Two (batch, frames) tensors.
    """
    batch, frames = prediction.shape[:2]
    pred = ((prediction.float().clamp(-1, 1) + 1) / 2).flatten(0, 1)
    true = ((target.float().clamp(-1, 1) + 1) / 2).flatten(0, 1)
    psnr = peak_signal_noise_ratio(pred, true, data_range=1.0, reduction="none", dim=(1, 2, 3)).clamp(max=MAX_PSNR_DB)
    ssim = structural_similarity_index_measure(pred, true, data_range=1.0, reduction="none")
    return psnr.view(batch, frames), ssim.view(batch, frames)


class VideoRollout(Callback):
    """Roll out validation clips and score the predicted frames.

    Args:
        context_frames: given frames per clip (the reference protocol uses 144 on Minecraft).
        rollout_frames: frames predicted after them.
        num_clips: validation clips scored (fewer if the stream has fewer).
        batch_size: clips rolled out together.
        steps, guidance_scale, solver: sampling settings (None: the module's defaults).
        every_n_epochs: also score every n training epochs; 0 scores only at fit end.
        lpips_vgg_path, lpips_head_path: LPIPS files (see `unisep.metrics.lpips`); LPIPS
            is skipped without `lpips_vgg_path`.
        fvd_i3d_path: TorchScript I3D file (see `unisep.metrics.fvd`); FVD is skipped without it.
        fvd_call_kwargs: keyword arguments of the I3D call.
        strip_clips: clips shown in `rollout.png` and `rollout.gif`.
        upscale: nearest-neighbour enlargement of the PNG and GIF.
        gif_frame_ms: display time of one GIF frame in milliseconds.
        seed: seed of the sampling noise, so every evaluation uses the same noise.
    """

    def __init__(
        self,
        context_frames: int = 8,
        rollout_frames: int = 8,
        num_clips: int = 64,
        batch_size: int = 32,
        steps: int | None = None,
        guidance_scale: float | None = None,
        solver: str | None = None,
        every_n_epochs: int = 0,
        lpips_vgg_path: str | None = None,
        lpips_head_path: str | None = None,
        fvd_i3d_path: str | None = None,
        fvd_call_kwargs: dict[str, Any] | None = None,
        strip_clips: int = 4,
        upscale: int = 4,
        gif_frame_ms: int = 250,
        seed: int = 0,
    ):
        if context_frames < 1 or rollout_frames < 1:
            raise ValueError(f"context_frames and rollout_frames must be >= 1, got {context_frames}, {rollout_frames}")
        self.context_frames = context_frames
        self.rollout_frames = rollout_frames
        self.num_clips = num_clips
        self.batch_size = batch_size
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.solver = solver
        self.every_n_epochs = every_n_epochs
        self.lpips_vgg_path = lpips_vgg_path
        self.lpips_head_path = lpips_head_path
        self.fvd_i3d_path = fvd_i3d_path
        self.fvd_call_kwargs = fvd_call_kwargs
        self.strip_clips = strip_clips
        self.upscale = upscale
        self.gif_frame_ms = gif_frame_ms
        self.seed = seed

    # ------------------------------------------------------------------ Lightning hooks

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs <= 0:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        metrics, _ = self.evaluate(trainer, pl_module)
        for name in ("rollout_psnr", "rollout_ssim", "copy_last_psnr"):
            pl_module.log(f"val/{name}", metrics[name], rank_zero_only=True)

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        run_dir = Path(trainer.log_dir or ".")
        metrics, videos = self.evaluate(trainer, pl_module)
        self._save_media(trainer, videos, run_dir)
        update_metrics_json(run_dir, metrics)
        summary = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        print(f"\nRollout metrics ({run_dir.resolve() / 'metrics.json'}): {summary}")

    # ------------------------------------------------------------------ evaluation

    def _clips(self, trainer: Trainer) -> tuple[Tensor, Tensor | None]:
        datamodule = trainer.datamodule
        loader = datamodule.val_dataloader() if datamodule is not None else None
        if not loader:
            raise ValueError("VideoRollout needs validation clips; give the datamodule val_shards")
        needed = self.context_frames + self.rollout_frames
        frames, actions = [], []
        for batch in loader:
            if batch["frames"].shape[1] < needed:
                raise ValueError(
                    f"validation clips have {batch['frames'].shape[1]} frames, fewer than context_frames"
                    f" + rollout_frames = {needed}; raise the datamodule's clip_length"
                )
            frames.append(batch["frames"][:, :needed])
            if batch.get("actions") is not None:
                actions.append(batch["actions"][:, :needed])
            if sum(len(f) for f in frames) >= self.num_clips:
                break
        clips = torch.cat(frames)[: self.num_clips]
        return clips, torch.cat(actions)[: self.num_clips] if actions else None

    @torch.no_grad()
    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """Roll out the validation clips; return the metrics and the videos (clips, frames, C, H, W)."""
        clips, actions = self._clips(trainer)
        context_end = self.context_frames
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        predictions = []
        for start in range(0, len(clips), self.batch_size):
            chunk = clips[start : start + self.batch_size].to(pl_module.device)
            chunk_actions = None if actions is None else actions[start : start + self.batch_size]
            frames = pl_module.generate(
                chunk[:, :context_end],
                self.rollout_frames,
                steps=self.steps,
                guidance_scale=self.guidance_scale,
                solver=self.solver,
                actions=chunk_actions,
                generator=generator,
            )
            predictions.append(torch.stack(list(frames), dim=1).cpu())
        prediction = torch.cat(predictions)
        truth = clips[:, context_end:]
        copy_last = clips[:, context_end - 1 : context_end].expand_as(truth)
        context_mean = clips[:, :context_end].mean(dim=1, keepdim=True).expand_as(truth)

        psnr, ssim = frame_scores(prediction, truth)
        copy_psnr, copy_ssim = frame_scores(copy_last, truth)
        mean_psnr, mean_ssim = frame_scores(context_mean, truth)
        hp = getattr(pl_module, "hparams", {})
        metrics: dict[str, Any] = {
            "rollout_psnr": float(psnr.mean()),
            "rollout_ssim": float(ssim.mean()),
            "copy_last_psnr": float(copy_psnr.mean()),
            "copy_last_ssim": float(copy_ssim.mean()),
            "context_mean_psnr": float(mean_psnr.mean()),
            "context_mean_ssim": float(mean_ssim.mean()),
            "rollout_psnr_per_frame": [float(v) for v in psnr.mean(dim=0)],
            "rollout_protocol": {
                "context_frames": self.context_frames,
                "rollout_frames": self.rollout_frames,
                "num_clips": int(len(clips)),
                "steps": self.steps or hp.get("sample_steps"),
                "guidance_scale": hp.get("guidance_scale") if self.guidance_scale is None else self.guidance_scale,
                "solver": self.solver or hp.get("sample_solver"),
                "ema": bool(getattr(pl_module, "use_ema_for_eval", False)),
                "data_range": "frames scaled from [-1, 1] to [0, 1]",
            },
        }
        metrics.update(self._optional_metrics(prediction, truth))
        return metrics, {"context": clips[:, :context_end], "prediction": prediction, "truth": truth}

    def _optional_metrics(self, prediction: Tensor, truth: Tensor) -> dict[str, Any]:
        skipped: dict[str, str] = {}
        out: dict[str, Any] = {}
        if self.lpips_vgg_path is None:
            skipped["lpips"] = "no lpips_vgg_path given (VGG16 backbone file)"
        else:
            from unisep.metrics.lpips import LPIPS

            lpips = LPIPS(self.lpips_vgg_path, self.lpips_head_path)
            distances = [lpips(p, t) for p, t in zip(prediction.flatten(0, 1).split(64), truth.flatten(0, 1).split(64))]
            out["rollout_lpips"] = float(torch.cat(distances).mean())
        if self.fvd_i3d_path is None:
            skipped["fvd"] = "no fvd_i3d_path given (TorchScript I3D file)"
        elif len(prediction) < 2:
            skipped["fvd"] = "FVD needs at least 2 clips"
        else:
            from unisep.metrics.fvd import I3DFeatures, frechet_video_distance

            i3d = I3DFeatures(self.fvd_i3d_path, self.fvd_call_kwargs)
            out["rollout_fvd"] = frechet_video_distance(i3d(truth), i3d(prediction))
        if skipped:
            out["skipped_metrics"] = skipped
        return out

    # ------------------------------------------------------------------ media

    def _save_media(self, trainer: Trainer, videos: dict[str, Tensor], run_dir: Path) -> None:
        count = min(self.strip_clips, len(videos["prediction"]))
        context, prediction, truth = (videos[k][:count] for k in ("context", "prediction", "truth"))
        rows = []
        for index in range(count):
            rows.append(torch.cat([context[index], prediction[index]]))
            rows.append(torch.cat([context[index], truth[index]]))
        grid = make_grid(to_uint8(torch.cat(rows)), rows=len(rows))
        save_png(grid, run_dir / "rollout.png", self.upscale)
        log_image(trainer, "rollout", grid, trainer.global_step)

        # GIF: one frame per time step, each clip's prediction beside its ground truth.
        predicted_video = torch.cat([context, prediction], dim=1)
        true_video = torch.cat([context, truth], dim=1)
        gif_frames = []
        for step in range(predicted_video.shape[1]):
            cells = torch.stack([predicted_video[:, step], true_video[:, step]], dim=1).flatten(0, 1)
            cell_grid = make_grid(to_uint8(cells), rows=count)
            image = Image.fromarray(cell_grid[..., 0] if cell_grid.shape[-1] == 1 else cell_grid)
            if self.upscale > 1:
                image = image.resize((image.width * self.upscale, image.height * self.upscale), Image.NEAREST)
            gif_frames.append(image)
        gif_frames[0].save(
            run_dir / "rollout.gif", save_all=True, append_images=gif_frames[1:], duration=self.gif_frame_ms, loop=0
        )

