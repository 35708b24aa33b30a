"""Load PyTorch checkpoints of the reference models into our Flax parameter trees.

`passt_params(state_dict)` converts a kkoutini/PaSST (or `hear21passt`) state dict — e.g. the
released `passt-s-f128-p16-s10-ap.476-swa.pt` — into the `params` of `models.passt.PaSST`.
`m2d_params(state_dict)` converts an nttcslab/m2d checkpoint into the `params` of
`models.m2d.M2DEncoder` and reports its settings; `load_m2d(path)` reads one from a file.
`resunetk_params(state_dict)` converts the DCASE 2026 Task 4 baseline's ResUNetK separator (its
Lightning checkpoint or bare state dict) into the variables of `models.resunetk.ResUNetK`.
`load_torch_state_dict(path)` reads a `.pt`/`.ckpt` file (needs PyTorch) or an `.npz` written by
`save_npz`, so a machine without PyTorch can use a checkpoint converted elsewhere.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Mapping, Optional, Tuple

import numpy as np


def _np(value) -> np.ndarray:
  if hasattr(value, "detach"):   # a torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def load_torch_state_dict(path: str, prefix: str = "") -> Dict[str, np.ndarray]:
  """{name: float32 array} from a PyTorch checkpoint (`.pt`, `.pth`, `.ckpt`) or an `.npz`.

  A Lightning-style `{"state_dict": …}` or an M2D-style `{"model": …}` is unwrapped; `prefix`
  (e.g. "net.") is stripped from the names that carry it and the others are dropped.
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
    for key in ("state_dict", "model"):   # Lightning's and M2D's wrappers
      if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
        state = state[key]
        break
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


# --- M2D -------------------------------------------------------------------------------------
# nttcslab/m2d@f0c4128 `examples/portable_m2d.py` (`get_backbone`, `reformat_ckpt_keys`,
# `PortableM2D.__init__`) and the T4 baseline's copy of it.

M2D_PREFIX = "module.ar.runtime.backbone."   # EVAR fine-tuning's name for the ViT
# Keys of an M2D checkpoint outside the ViT, which the encoder does not use: EVAR's fine-tuned
# head (`module.head.norm.*`, `module.head.mlp.mlp.0.*`) and the rest of EVAR's wrapper
# (`module.ar.*` outside the backbone, e.g. frontend buffers), a timm head or fc_norm, and
# M2D-CLAP's audio/text projectors.
_M2D_NON_BACKBONE = re.compile(r"^(module\.head\.|module\.ar\.|head\.|fc_norm\.|audio_proj\.|"
                               r"text_proj\.)")
# The flat-features rule of `PortableM2D.__init__`: an EVAR head on single patch embeddings.
_M2D_EVAR_HEAD = "module.head.mlp.mlp.0.weight"
# Released M2D models (16×16 patches) are 80 mel bins × 208, 608 or 1001 frames. The frames are
# not in the weights (the grid is frames // 16), so the patch count names them.
_M2D_RELEASED_SIZES = {5 * 13: (80, 208), 5 * 38: (80, 608), 5 * 62: (80, 1001)}
_M2D_DEFAULT_NORM_STATS = (-7.1, 4.2)   # what the reference assumes for 2022 checkpoints


def m2d_params(state_dict: Mapping[str, np.ndarray],
               input_size: Optional[Tuple[int, int]] = None,
               num_heads: Optional[int] = None) -> Tuple[Dict, Dict]:
  """Flax `params` of `models.m2d.M2DEncoder` from an M2D state dict, and its settings.

  Args:
    state_dict: the ViT's tensors with EVAR's prefix `module.ar.runtime.backbone.` (stripped) or
      without a prefix, plus optionally `norm_stats` and the known non-backbone keys (ignored).
    input_size: (mel bins, frames) of the model, which the weights do not determine (M2D reads
      it from the checkpoint's folder name; `load_m2d` does too). None: one of the released
      sizes fitting the positional grid (80 × 208, 608, 1001).
    num_heads: attention heads; None: embed_dim // 64 (ViT's head width of 64: ViT-B has 12).

  Returns:
    (params, info): info holds M2DEncoder's settings — embed_dim, depth, num_heads, mlp_ratio,
    patch_size, input_size, flat_features (True when the checkpoint has EVAR's head
    `module.head.mlp.mlp.0.weight` with input width embed_dim, as `PortableM2D` decides) — and
    `norm_stats` (mean, std) of the log-mels (the reference's default (−7.1, 4.2) when the
    checkpoint has none; `norm_stats_in_checkpoint` says which).

  Raises ValueError naming the key for a missing or unused backbone tensor and naming the key
  and both shapes for a tensor whose shape does not fit.
  """
  state, origin = {}, {}
  for key, value in state_dict.items():
    if key.startswith(M2D_PREFIX):
      name = key[len(M2D_PREFIX):]
    elif _M2D_NON_BACKBONE.match(key):
      continue
    else:
      name = key
    if name in state:
      raise ValueError(f"M2D state dict has {name!r} twice: as {origin[name]!r} and {key!r}")
    state[name], origin[name] = _np(value), key
  used = set()

  def take(name, shape=None):
    if name not in state:
      raise ValueError(f"M2D state dict has no {M2D_PREFIX + name!r} (nor {name!r})")
    used.add(name)
    value = state[name]
    if shape is not None and tuple(value.shape) != tuple(shape):
      raise ValueError(f"M2D state dict's {origin[name]!r} has shape {tuple(value.shape)}; "
                       f"the model needs {tuple(shape)}")
    return value

  kernel = take("patch_embed.proj.weight")
  if kernel.ndim != 4 or kernel.shape[1] != 1 or kernel.shape[2] != kernel.shape[3]:
    raise ValueError(f"M2D state dict's {origin['patch_embed.proj.weight']!r} has shape "
                     f"{kernel.shape}; the model needs (D, 1, p, p)")
  dim, patch = kernel.shape[0], kernel.shape[2]
  hidden = take("blocks.0.mlp.fc1.weight").shape[0]
  depth = 1 + max(int(m.group(1)) for k in state for m in [re.match(r"blocks\.(\d+)\.", k)] if m)
  num_heads = dim // 64 if num_heads is None else int(num_heads)
  if num_heads < 1 or dim % num_heads:
    raise ValueError(f"M2D: {num_heads} heads do not divide the width {dim}")
  patches = take("pos_embed").shape[1] - 1
  if input_size is None:
    input_size = _M2D_RELEASED_SIZES.get(patches) if patch == 16 else None
    if input_size is None:
      raise ValueError(f"M2D: a {patches}-patch positional grid of {patch}×{patch} patches is no "
                       "released model's; pass input_size=(mel bins, frames)")
  input_size = (int(input_size[0]), int(input_size[1]))
  grid = (input_size[0] // patch) * (input_size[1] // patch)

  def linear(name, d_out, d_in):
    return {"kernel": take(f"{name}.weight", (d_out, d_in)).T,
            "bias": take(f"{name}.bias", (d_out,))}

  def norm(name):
    return {"scale": take(f"{name}.weight", (dim,)), "bias": take(f"{name}.bias", (dim,))}

  params = {
      "patch_embed": {"kernel": kernel.transpose(2, 3, 1, 0),   # (D, 1, p, p) → (p, p, 1, D)
                      "bias": take("patch_embed.proj.bias", (dim,))},
      "pos_embed": take("pos_embed", (1, 1 + grid, dim)),
      "cls_token": take("cls_token", (1, 1, dim)),
      "norm": norm("norm"),
  }
  for i in range(depth):
    b = f"blocks.{i}"
    params[f"blocks_{i}"] = {
        "norm1": norm(f"{b}.norm1"), "norm2": norm(f"{b}.norm2"),
        "attn": {"qkv": linear(f"{b}.attn.qkv", 3 * dim, dim),
                 "proj": linear(f"{b}.attn.proj", dim, dim)},
        "fc1": linear(f"{b}.mlp.fc1", hidden, dim), "fc2": linear(f"{b}.mlp.fc2", dim, hidden),
    }
  in_checkpoint = "norm_stats" in state
  norm_stats = take("norm_stats", (2,)) if in_checkpoint else np.asarray(_M2D_DEFAULT_NORM_STATS)
  unused = sorted(origin[k] for k in state if k not in used)
  if unused:
    raise ValueError(f"M2D state dict has tensors the encoder does not use: {unused[:10]}")
  evar_head = state_dict.get(_M2D_EVAR_HEAD)
  info = {"embed_dim": dim, "depth": depth, "num_heads": num_heads, "mlp_ratio": hidden / dim,
          "patch_size": patch, "input_size": input_size,
          "flat_features": evar_head is not None and np.shape(evar_head)[-1] == dim,
          "norm_stats": (float(norm_stats[0]), float(norm_stats[1])),
          "norm_stats_in_checkpoint": in_checkpoint}
  return params, info


def m2d_input_size_from_name(name: str) -> Optional[Tuple[int, int]]:
  """(mel bins, frames) from an M2D folder name, e.g. `m2d_as_vit_base-80x1001p16x16p32k-…`
  → (80, 1001) (`parse_sizes_by_name` in the reference); None if the name has no size."""
  match = re.search(r"-(\d+)x(\d+)p\d+x\d+", name)
  return (int(match.group(1)), int(match.group(2))) if match else None


def load_m2d(path: str, input_size: Optional[Tuple[int, int]] = None,
             num_heads: Optional[int] = None) -> Tuple[Dict, Dict]:
  """(params, info) of `m2d_params` from an M2D checkpoint file (`.pth` needs PyTorch) or an
  `.npz` of its state dict. `input_size` defaults to the one in the checkpoint's folder name,
  as the reference reads it (`m2d_as_vit_base-80x1001p16x16p32k-240413_AS-FT_enconly/…`)."""
  if input_size is None:
    input_size = m2d_input_size_from_name(os.path.basename(os.path.dirname(os.path.abspath(path))))
  return m2d_params(load_torch_state_dict(path), input_size=input_size, num_heads=num_heads)


# ----------------------------------------------------------------------------- ResUNetK
# Tensors of the DCASE 2026 Task 4 ResUNetK checkpoint that the forward pass does not read:
# torchlibrosa's frozen DFT matrices and overlap-add window (`base.stft.*`, `base.istft.*`,
# recomputed by `models.resunetk.stft`/`istft`), each decoder block's `bn2` and its FiLM `beta2`
# (built, never called), and the batch-norm counters.
_RESUNETK_UNUSED = re.compile(r"^base\.(stft|istft)\.|^base\.decoder_block\d+\.bn2\."
                              r"|^film\.decoder_block\d+->beta2\.|\.num_batches_tracked$")
_RESUNETK_QUERY = {"fc1": "0", "ln1": "1", "fc2": "3", "ln2": "4"}   # nn.Sequential indices


def _resunetk_state(state_dict: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """The state dict as float32 arrays, without the Lightning module's `model.` prefix (the
  baseline's `LabelQueriedSeparationLightning` holds the separator as `self.model`)."""
  state = {k: _np(v) for k, v in state_dict.items()}
  if state and all(k.startswith("model.") for k in state):
    state = {k[len("model."):]: v for k, v in state.items()}
  return state


def resunetk_settings(state_dict: Mapping[str, np.ndarray]) -> Dict:
  """`models.resunetk.ResUNetK` fields read off a T4 ResUNetK state dict: in_channels,
  num_sources, n_classes, condition_size, widths and n_fft (the hop is not stored: 160)."""
  state = _resunetk_state(state_dict)
  try:
    query = state["label_embedding.0.weight"].shape             # (condition, K·n_classes)
    in_channels = state["base.pre_conv.weight"].shape[1]
    num_sources = state["base.after_conv.weight"].shape[0] // (3 * in_channels)
    widths = tuple(state[f"base.encoder_block{i}.conv_block1.conv1.weight"].shape[0]
                   for i in range(1, 7))
    n_fft = 2 * (state["base.bn0.weight"].shape[0] - 1)
  except KeyError as e:
    raise ValueError(f"ResUNetK state dict has no {e.args[0]!r}") from None
  return {"in_channels": in_channels, "num_sources": num_sources,
          "n_classes": query[1] // num_sources, "condition_size": query[0], "widths": widths,
          "n_fft": n_fft}


def resunetk_params(state_dict: Mapping[str, np.ndarray], model=None) -> Dict:
  """Flax variables {"params", "batch_stats"} of `models.resunetk.ResUNetK` from the PyTorch
  state dict of the T4 baseline's `ResUNet30` (nttcslab/dcase2026_task4_baseline
  `src/models/resunet2/resunet_mod.py`), bare or inside the Lightning checkpoint (`model.`…).

  `model` (default: `ResUNetK(**resunetk_settings(state_dict))`) gives the expected shapes.
  Layouts: Conv2d (O, I, kh, kw) → (kh, kw, I, O); ConvTranspose2d (I, O, kh, kw) → flipped in
  both spatial axes → (kh, kw, I, O) (`nn.ConvTranspose` does not flip its kernel); Linear
  (O, I) → (I, O); the FiLM layer `film.a->b->beta1` → `params[a][b]["beta1"]`.
  Raises ValueError naming every tensor the model needs that is missing, any tensor neither used
  nor known to be unused (`_RESUNETK_UNUSED`), or a tensor whose shape does not fit (its name,
  the checkpoint's shape and the model's, both in PyTorch's layout).
  """
  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  from jax_asc.models.resunetk import ResUNetK

  state = _resunetk_state(state_dict)
  if model is None:
    model = ResUNetK(**resunetk_settings(state))
  expected = jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, model.in_channels, model.n_fft)),
      jnp.zeros((1, model.num_sources * model.n_classes)))

  def torch_name(collection, path):
    *modules, leaf = path
    if collection == "batch_stats":
      leaf = {"mean": "running_mean", "var": "running_var"}[leaf]
    else:
      leaf = "bias" if leaf == "bias" else "weight"
    if modules[-1].startswith("beta"):                          # a FiLM layer
      return f"film.{'->'.join(modules)}.{leaf}"
    if modules[0] == "label_embedding":
      return f"label_embedding.{_RESUNETK_QUERY[modules[1]]}.{leaf}"
    return f"base.{'.'.join(modules)}.{leaf}"

  def to_flax(path, value):      # PyTorch layout → ours
    if value.ndim == 4 and path[0].startswith("decoder_block") and path[1] == "conv1":
      return value[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)      # ConvTranspose2d
    if value.ndim == 4:
      return value.transpose(2, 3, 1, 0)                        # Conv2d
    return value.T if value.ndim == 2 else value                # Linear, or a vector

  def torch_shape(path, shape):  # our shape → PyTorch's, for the error message
    if len(shape) == 4 and path[0].startswith("decoder_block") and path[1] == "conv1":
      return (shape[2], shape[3], shape[0], shape[1])
    if len(shape) == 4:
      return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape)) if len(shape) == 2 else tuple(shape)

  variables, missing, wrong, used = {}, [], [], set()
  for collection, tree in expected.items():
    flat = {}
    for path, leaf in traverse_util.flatten_dict(tree).items():
      name = torch_name(collection, path)
      if name not in state:
        missing.append(name)
        continue
      used.add(name)
      want = torch_shape(path, leaf.shape)
      if state[name].shape != want:
        wrong.append(f"{name}: checkpoint {state[name].shape}, model {want}")
        continue
      flat[path] = np.array(to_flax(path, state[name]))   # a copy: `.numpy()` shares memory
    variables[collection] = traverse_util.unflatten_dict(flat)
  frozen = {"base.stft.conv_real.weight": (model.n_fft // 2 + 1, 1, model.n_fft),
            "base.istft.conv_real.weight": (model.n_fft, model.n_fft, 1)}
  wrong += [f"{k}: checkpoint {state[k].shape}, model {v} (n_fft {model.n_fft})"
            for k, v in frozen.items() if k in state and state[k].shape != v]
  unused = sorted(k for k in state if k not in used and not _RESUNETK_UNUSED.search(k))
  problems = ([f"missing {missing}"] if missing else []) + (
      [f"unused {unused}"] if unused else []) + ([f"wrong shape: {'; '.join(wrong)}"]
                                                 if wrong else [])
  if problems:
    raise ValueError("ResUNetK state dict does not fit the model: " + " | ".join(problems))
  return variables
