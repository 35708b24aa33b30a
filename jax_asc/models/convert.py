"""Load PyTorch checkpoints of the reference models into our Flax parameter trees.

`passt_params(state_dict)` converts a kkoutini/PaSST (or `hear21passt`) state dict — e.g. the
released `passt-s-f128-p16-s10-ap.476-swa.pt` — into the `params` of `models.passt.PaSST`.
`load_torch_state_dict(path)` reads a `.pt`/`.ckpt` file (needs PyTorch) or an `.npz` written by
`save_npz`, so a machine without PyTorch can use a checkpoint converted elsewhere.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Mapping

import numpy as np


def _np(value) -> np.ndarray:
  if hasattr(value, "detach"):   # a torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def load_torch_state_dict(path: str, prefix: str = "") -> Dict[str, np.ndarray]:
  """{name: float32 array} from a PyTorch checkpoint (`.pt`, `.pth`, `.ckpt`) or an `.npz`.

  A Lightning-style `{"state_dict": …}` is unwrapped; `prefix` (e.g. "net.") is stripped from
  the names that carry it and the others are dropped.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if path.endswith(".npz"):
    with np.load(path) as f:
      state = {k: f[k] for k in f.files}
  else:
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"reading {path} needs PyTorch (pip install torch==2.13.0), or convert it "
                        "to .npz with jax_asc.models.convert.save_npz on a machine that has it") from e
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, Mapping) and "state_dict" in state:
      state = state["state_dict"]
    if not isinstance(state, Mapping):
      raise ValueError(f"{path} holds a {type(state).__name__}, expected a state dict")
  if prefix:
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not state:
      raise ValueError(f"no parameter name in {path} starts with {prefix!r}")
  return {k: _np(v) for k, v in state.items()}


def save_npz(state_dict: Mapping[str, np.ndarray], path: str) -> None:
  np.savez(path, **{k: _np(v) for k, v in state_dict.items()})


_PASST_IGNORED = re.compile(r"^(head_dist\.|pre_logits\.)")


def passt_params(state_dict: Mapping[str, np.ndarray]) -> Dict:
  """Flax `params` of `PaSST` from a PyTorch PaSST state dict.

  Every tensor the forward pass uses must be present and every tensor present must be used,
  except `head_dist` (in the checkpoints, unused by the forward). Raises naming the keys otherwise.
  """
  state = {k: _np(v) for k, v in state_dict.items()}
  used = set()

  def take(name):
    if name not in state:
      carriers = [k for k in state if k.endswith("." + name)]
      hint = (f" (it has {carriers[0]!r}: set the name prefix, model_init.prefix="
              f"{carriers[0][:-len(name)]!r})" if carriers else "")
      raise KeyError(f"PaSST state dict has no {name!r}{hint}")
    used.add(name)
    return state[name]

  def linear(name):
    return {"kernel": take(f"{name}.weight").T, "bias": take(f"{name}.bias")}

  def norm(name):
    return {"scale": take(f"{name}.weight"), "bias": take(f"{name}.bias")}

  params = {
      "patch_embed": {"kernel": take("patch_embed.proj.weight").transpose(2, 3, 1, 0),
                      "bias": take("patch_embed.proj.bias")},
      # (1, D, 1, T) → (1, 1, T, D) and (1, D, F, 1) → (1, F, 1, D): NHWC with H = frequency.
      "time_new_pos_embed": take("time_new_pos_embed").transpose(0, 2, 3, 1),
      "freq_new_pos_embed": take("freq_new_pos_embed").transpose(0, 2, 3, 1),
      "cls_token": take("cls_token"),
      "dist_token": take("dist_token"),
      "new_pos_embed": take("new_pos_embed"),
      "norm": norm("norm"),
      "head_norm": norm("head.0"),
      "head": linear("head.1"),
  }
  depth = 1 + max(int(m.group(1)) for k in state for m in [re.match(r"blocks\.(\d+)\.", k)] if m)
  for i in range(depth):
    b = f"blocks.{i}"
    params[f"blocks_{i}"] = {
        "norm1": norm(f"{b}.norm1"), "norm2": norm(f"{b}.norm2"),
        "attn": {"qkv": linear(f"{b}.attn.qkv"), "proj": linear(f"{b}.attn.proj")},
        "fc1": linear(f"{b}.mlp.fc1"), "fc2": linear(f"{b}.mlp.fc2"),
    }
  unused = sorted(k for k in state if k not in used and not _PASST_IGNORED.match(k))
  if unused:
    raise KeyError(f"PaSST state dict has tensors the model does not use: {unused[:10]}")
  return params


def passt_settings(state_dict: Mapping[str, np.ndarray]) -> Dict[str, int]:
  """Architecture read off a PaSST state dict: embed_dim, depth, n_classes, grid and patch."""
  kernel = np.shape(state_dict["patch_embed.proj.weight"])
  depth = 1 + max(int(m.group(1)) for k in state_dict
                  for m in [re.match(r"blocks\.(\d+)\.", k)] if m)
  return {"embed_dim": kernel[0], "patch_size": kernel[-1], "depth": depth,
          "n_classes": np.shape(state_dict["head.1.weight"])[0],
          "grid_f": np.shape(state_dict["freq_new_pos_embed"])[2],
          "grid_t": np.shape(state_dict["time_new_pos_embed"])[3]}
