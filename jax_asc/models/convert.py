"""Load PyTorch checkpoints of the reference models into our Flax parameter trees.

`passt_params(state_dict)` converts a kkoutini/PaSST (or `hear21passt`) state dict — e.g. the
released `passt-s-f128-p16-s10-ap.476-swa.pt` — into the `params` of `models.passt.PaSST`.
`m2d_params(state_dict)` converts an nttcslab/m2d checkpoint into the `params` of
`models.m2d.M2DEncoder` and reports its settings; `load_m2d(path)` reads one from a file.
`resunetk_params(state_dict)` converts the DCASE 2026 Task 4 baseline's ResUNetK separator (its
Lightning checkpoint or bare state dict) into the variables of `models.resunetk.ResUNetK`.
`load_torch_state_dict(path)` reads a `.pt`/`.ckpt` file (needs PyTorch) or an `.npz` written by
`save_npz`, so a machine without PyTorch can use a checkpoint converted elsewhere.
`read_safetensors(path, prefixes)` reads chosen tensors of a `.safetensors` file or sharded
folder without PyTorch; `qwen_audio_state_dict(path)` takes Qwen2-Audio's audio tower from it,
`qwen_audio_params` converts that into the `params` of `models.qwen_audio.QwenAudioEncoder`.
`load_beats(path)` reads an official BEATs checkpoint ({cfg, model, label_dict}; `.pt` or an
`.npz` of `save_beats_npz`) into (cfg, params of `models.beats.BEATsEncoder`) via `beats_params`;
`beats_model_fields(cfg)` gives the model's config fields.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import (TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple,
                    Union)

if TYPE_CHECKING:
  from jax_asc.models.qwen_audio import QwenAudioEncoder

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


# ----------------------------------------------------------------------------- safetensors
# The format (huggingface/safetensors): an 8-byte little-endian unsigned header length n, a JSON
# header of n bytes {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": …},
# then the raw little-endian tensor bytes, offsets counted from the end of the header. A sharded
# checkpoint is a folder with `model.safetensors.index.json`, {"weight_map": {name: shard file}}.
# Files are memory-mapped: only the bytes of the tensors asked for are read from disk.

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"
_SAFETENSORS_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
_SAFETENSORS_MAX_HEADER = 100 << 20   # bytes; a larger header means a corrupt or foreign file
_HASH_CHUNK = 64 << 20                # bytes hashed at a time


def _safetensors_header(file: str) -> Tuple[Dict[str, Dict], int]:
  """({name: {dtype, shape, data_offsets}}, byte offset of the data) of one `.safetensors`."""
  size = os.path.getsize(file)
  with open(file, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise ValueError(f"{file} is not a safetensors file: {size} bytes, no header length")
    n = int.from_bytes(head, "little")
    if n > min(size - 8, _SAFETENSORS_MAX_HEADER):
      raise ValueError(f"{file} is not a safetensors file: header length {n} in a file of "
                       f"{size} bytes")
    try:
      header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f"{file}: the safetensors header is not JSON ({e})") from None
  if not isinstance(header, dict):
    raise ValueError(f"{file}: the safetensors header is a {type(header).__name__}, not a dict")
  header.pop("__metadata__", None)
  return header, 8 + n


def _safetensors_locations(path: str) -> Tuple[str, Dict[str, str]]:
  """(the file or index read, {tensor name: file holding it}) for a `.safetensors` file, an index
  json, or a folder holding `model.safetensors.index.json` or `model.safetensors`."""
  if os.path.isdir(path):
    index, single = os.path.join(path, SAFETENSORS_INDEX), os.path.join(path, SAFETENSORS_FILE)
    if os.path.exists(index):
      path = index
    elif os.path.exists(single):
      path = single
    else:
      raise FileNotFoundError(f"{path} holds neither {SAFETENSORS_INDEX} nor {SAFETENSORS_FILE}")
  elif not os.path.exists(path):
    raise FileNotFoundError(f"safetensors checkpoint {path} does not exist")
  if path.endswith(".json"):
    with open(path) as f:
      try:
        index = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON safetensors index ({e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
      raise ValueError(f"{path} has no 'weight_map' {{tensor name: shard file}}")
    folder = os.path.dirname(os.path.abspath(path))
    return path, {name: os.path.join(folder, shard) for name, shard in weight_map.items()}
  header, _ = _safetensors_header(path)
  return path, {name: path for name in header}


def _prefix_tuple(prefixes: Union[None, str, Iterable[str]]) -> Optional[Tuple[str, ...]]:
  if prefixes is None:
    return None
  return (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)


def _tensor_views(path: str, prefixes=None) -> Tuple[str, Dict[str, Tuple], List[str]]:
  """(source, {name: (dtype, shape, raw uint8 memmap view, file)}, all names) of the tensors whose
  names start with one of `prefixes` (None: all). Views are lazy: nothing is read yet."""
  source, locations = _safetensors_locations(path)
  prefixes = _prefix_tuple(prefixes)
  by_file: Dict[str, List[str]] = {}
  for name, file in locations.items():
    if prefixes is None or name.startswith(prefixes):
      by_file.setdefault(file, []).append(name)
  views = {}
  for file, names in by_file.items():
    if not os.path.exists(file):
      raise FileNotFoundError(f"{source} puts {names[0]!r} in {file}, which does not exist")
    header, start = _safetensors_header(file)
    size = os.path.getsize(file) - start
    data = (np.memmap(file, dtype=np.uint8, mode="r", offset=start, shape=(size,)) if size
            else np.zeros(0, np.uint8))
    for name in names:
      info = header.get(name)
      if not isinstance(info, dict):
        raise ValueError(f"{source} puts {name!r} in {file}, whose header has no such tensor")
      dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
      if dtype not in _SAFETENSORS_DTYPES:
        raise ValueError(f"{file}: tensor {name!r} has dtype {dtype}; only "
                         f"{sorted(_SAFETENSORS_DTYPES)} are read")
      if not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
        raise ValueError(f"{file}: tensor {name!r} has a malformed header entry {info}")
      shape = tuple(int(s) for s in shape)
      begin, end = (int(o) for o in offsets)
      nbytes = int(np.prod(shape, dtype=np.int64)) * _SAFETENSORS_DTYPES[dtype].itemsize
      if not 0 <= begin <= end <= size or end - begin != nbytes:
        raise ValueError(f"{file}: tensor {name!r} ({dtype} {list(shape)}, {nbytes} bytes) has "
                         f"data_offsets [{begin}, {end}] in a data section of {size} bytes")
      views[name] = (dtype, shape, data[begin:end], file)
  return source, views, list(locations)


def _as_float32(dtype: str, shape: Tuple[int, ...], raw: np.ndarray) -> np.ndarray:
  """A float32 copy of a tensor's raw little-endian bytes (bf16: its bits are float32's top 16)."""
  values = raw.view(_SAFETENSORS_DTYPES[dtype])
  if dtype == "BF16":
    values = (values.astype(np.uint32) << 16).view(np.float32)
  return values.astype(np.float32).reshape(shape)


def read_safetensors(path: str, prefixes: Union[None, str, Sequence[str]] = None
                     ) -> Dict[str, np.ndarray]:
  """{name: float32 array} of the tensors of a safetensors checkpoint (no PyTorch needed).

  Args:
    path: a `.safetensors` file, a folder holding `model.safetensors.index.json` (its
      `weight_map` names the shard of each tensor) or `model.safetensors`, or the index json.
    prefixes: read only the tensors whose names start with one of these (a string or a
      sequence); None: all. Shards holding none of them are never opened, and within a file only
      the chosen tensors' bytes are read (memory-mapped).

  F32, F16 and BF16 tensors are read (as float32); any other dtype raises ValueError naming the
  tensor and the file, as do a malformed header and offsets outside the file.
  """
  _, views, _ = _tensor_views(path, prefixes)
  return {name: _as_float32(dtype, shape, raw) for name, (dtype, shape, raw, _) in views.items()}


# ----------------------------------------------------------------------------- Qwen2-Audio
# The audio tower of a Qwen2-Audio checkpoint (Qwen/Qwen2-Audio-7B[-Instruct]: safetensors shards
# in bf16; the tower is "audio_tower.*", "model.audio_tower.*" in transformers 5's layout).
# Only the tower's tensors are read: the language model's shards are never opened.

QWEN_AUDIO_PREFIXES = ("audio_tower.", "model.audio_tower.")


def _audio_tower_views(path: str) -> Dict[str, Tuple]:
  """{name without the prefix: (dtype, shape, raw view, file)} of the audio tower's tensors."""
  source, views, names = _tensor_views(path, QWEN_AUDIO_PREFIXES)
  if not views:
    raise ValueError(f"{source} holds no Qwen2-Audio audio tower: no tensor name starts with "
                     f"{' or '.join(map(repr, QWEN_AUDIO_PREFIXES))} (it has {len(names)} "
                     f"tensors, e.g. {sorted(names)[:5]})")
  return _unprefixed(views.items(), source)[0]


def _strip_audio_prefix(name: str) -> str:
  for prefix in QWEN_AUDIO_PREFIXES:
    if name.startswith(prefix):
      return name[len(prefix):]
  return name


class _StateReader:
  """A converter's view of a PyTorch state dict: `take` returns a tensor by name and expected
  shape, recording the missing ones and those of another shape (zeros stand in, so the
  conversion goes on and `check` lists every problem in one error).

  `origin` maps a name to the name as the checkpoint spells it (for the messages); `ours` names
  the side the shapes come from ("model", "encoder")."""

  def __init__(self, state: Mapping[str, np.ndarray],
               origin: Optional[Mapping[str, str]] = None, ours: str = "model"):
    self.state = state
    self.origin = origin if origin is not None else {name: name for name in state}
    self.ours = ours
    self.used, self.missing, self.wrong = set(), [], []

  def take(self, name: str, shape) -> np.ndarray:
    if name not in self.state:
      self.missing.append(name)
      return np.zeros(shape, np.float32)
    self.used.add(name)
    value = self.state[name]
    if value.shape != tuple(shape):
      self.wrong.append(f"{self.origin[name]}: checkpoint {value.shape}, {self.ours} "
                        f"{tuple(shape)}")
      return np.zeros(shape, np.float32)
    return value

  def linear(self, name: str, d_out: int, d_in: int, bias: bool = True) -> Dict:
    """torch Linear `name` (weight (d_out, d_in)) as Flax Dense params (kernel (d_in, d_out))."""
    out = {"kernel": np.ascontiguousarray(self.take(f"{name}.weight", (d_out, d_in)).T)}
    if bias:
      out["bias"] = self.take(f"{name}.bias", (d_out,))
    return out

  def norm(self, name: str, width: int) -> Dict:
    """torch LayerNorm `name` as Flax LayerNorm params (scale, bias: (width,))."""
    return {"scale": self.take(f"{name}.weight", (width,)),
            "bias": self.take(f"{name}.bias", (width,))}

  def check(self, what: str, ignored: Optional[re.Pattern] = None) -> None:
    """Raises ValueError "`what`: missing … | unused … | wrong shape: …" (ten names of each at
    most) when a tensor was missing or of another shape, or one not matching `ignored` was
    never taken."""
    unused = sorted(self.origin[name] for name in self.state if name not in self.used
                    and not (ignored and ignored.match(name)))

    def listed(names):
      return f"{names[:10]}" + (f" and {len(names) - 10} more" if len(names) > 10 else "")

    problems = ([f"missing {listed(self.missing)}"] if self.missing else []) + (
        [f"unused {listed(unused)}"] if unused else []) + (
        [f"wrong shape: {'; '.join(self.wrong[:10])}"] if self.wrong else [])
    if problems:
      raise ValueError(f"{what}: " + " | ".join(problems))


def _unprefixed(items, where: str) -> Tuple[Dict[str, Any], Dict[str, str]]:
  """({name without its audio-tower prefix: value}, {that name: the name as given}); a name
  present under two prefixes is an error naming both."""
  out, origin = {}, {}
  for key, value in items:
    name = _strip_audio_prefix(key)
    if name in out:
      raise ValueError(f"{where} holds the audio tower's {name!r} twice: as {origin[name]!r} "
                       f"and {key!r}")
    out[name], origin[name] = value, key
  return out, origin


def qwen_audio_state_dict(path: str) -> Dict[str, np.ndarray]:
  """{name: float32 array} of the audio tower in a Qwen2-Audio safetensors checkpoint (a file, a
  sharded folder or its index json), with the prefix `audio_tower.` or `model.audio_tower.`
  stripped (`conv1.weight`, `layers.0.fc1.weight`, …). Raises ValueError naming the file, the
  prefixes looked for and a few of the names found when it has no audio tower."""
  return {name: _as_float32(dtype, shape, raw)
          for name, (dtype, shape, raw, _) in _audio_tower_views(path).items()}


def qwen_audio_fingerprint(path: str) -> str:
  """First 16 hex digits of the sha256 over the audio tower's tensors, sorted by name (prefix
  stripped): each one's name, dtype, shape and raw bytes, streamed from the memory-mapped file.
  Changes with any weight; the language model's tensors do not enter it."""
  digest = hashlib.sha256()
  for name, (dtype, shape, raw, _) in sorted(_audio_tower_views(path).items()):
    digest.update(f"{name}\0{dtype}\0{list(shape)}\0".encode())
    for i in range(0, raw.size, _HASH_CHUNK):
      digest.update(raw[i:i + _HASH_CHUNK])
  return digest.hexdigest()[:16]


def qwen_audio_params(state_dict: Mapping[str, np.ndarray], encoder: "QwenAudioEncoder") -> Dict:
  """Flax `params` of `models.qwen_audio.QwenAudioEncoder` from the audio tower's state dict.

  Args:
    state_dict: HF `Qwen2AudioEncoder` names (`conv1.weight`, `embed_positions.weight`,
      `layers.{i}.self_attn.q_proj.weight`, …), bare or with a prefix of `QWEN_AUDIO_PREFIXES`
      (`qwen_audio_state_dict`'s output, or a torch module's `state_dict()`).
    encoder: the module the params are for; its settings give the expected shapes.

  Layouts: Conv1d (out, in, k) → (k, in, out); Linear (out, in) → (in, out); LayerNorm
  weight → scale; `embed_positions.weight` (P, d) → `embed_positions/embedding`.
  Raises ValueError naming each setting (d_model, num_mel_bins, max_source_positions, ffn_dim,
  num_layers) on which the checkpoint and the encoder differ, or else listing the missing
  tensors, the unused ones and those of the wrong shape.
  """
  state, origin = _unprefixed(((k, _np(v)) for k, v in state_dict.items()),
                              "the Qwen2-Audio state dict")

  # The settings the checkpoint implies, so a mismatch names the setting, not a tensor.
  implied = {}
  for setting, key, axis in (("d_model", "conv1.weight", 0), ("num_mel_bins", "conv1.weight", 1),
                             ("max_source_positions", "embed_positions.weight", 0),
                             ("ffn_dim", "layers.0.fc1.weight", 0)):
    if key in state and state[key].ndim > axis:
      implied[setting] = state[key].shape[axis]
  layer_ids = [int(m.group(1)) for k in state for m in [re.match(r"layers\.(\d+)\.", k)] if m]
  if layer_ids:
    implied["num_layers"] = max(layer_ids) + 1
  differ = [f"{s}: checkpoint {v}, encoder {getattr(encoder, s)}" for s, v in implied.items()
            if v != getattr(encoder, s)]
  if differ:
    raise ValueError(f"Qwen2-Audio audio tower does not fit QwenAudioEncoder ({'; '.join(differ)})"
                     ": build the encoder with the checkpoint's settings")

  d, ffn = encoder.d_model, encoder.ffn_dim
  reader = _StateReader(state, origin, ours="encoder")
  take, linear = reader.take, reader.linear

  def conv(name, d_out, d_in):
    return {"kernel": np.ascontiguousarray(take(f"{name}.weight", (d_out, d_in, 3))
                                           .transpose(2, 1, 0)),
            "bias": take(f"{name}.bias", (d_out,))}

  def norm(name):
    return reader.norm(name, d)

  params = {
      "conv1": conv("conv1", d, encoder.num_mel_bins),
      "conv2": conv("conv2", d, d),
      "embed_positions": {"embedding": take("embed_positions.weight",
                                            (encoder.max_source_positions, d))},
      "layer_norm": norm("layer_norm"),
  }
  for i in range(encoder.num_layers):
    b = f"layers.{i}"
    params[f"layers_{i}"] = {
        "self_attn_layer_norm": norm(f"{b}.self_attn_layer_norm"),
        "self_attn": {"q_proj": linear(f"{b}.self_attn.q_proj", d, d),
                      "k_proj": linear(f"{b}.self_attn.k_proj", d, d, bias=False),
                      "v_proj": linear(f"{b}.self_attn.v_proj", d, d),
                      "out_proj": linear(f"{b}.self_attn.out_proj", d, d)},
        "final_layer_norm": norm(f"{b}.final_layer_norm"),
        "fc1": linear(f"{b}.fc1", ffn, d),
        "fc2": linear(f"{b}.fc2", d, ffn),
    }
  reader.check("Qwen2-Audio audio tower does not fit QwenAudioEncoder")
  return params


# ----------------------------------------------------------------------------- BEATs
# microsoft/unilm `beats/BEATs.py` checkpoints: a torch pickle {"cfg": dict, "model": state dict,
# "label_dict": …}; the cfg holds `BEATsConfig`'s fields. `models.beats.BEATsEncoder` takes the
# architecture fields, the dropout rates, the layer drop and the layer-wise gradient ratio by the
# same names; the fine-tuned predictor's settings are read and not used (our heads replace the
# predictor).

BEATS_CFG_ARCHITECTURE = (
    "input_patch_size", "embed_dim", "conv_bias", "encoder_layers", "encoder_embed_dim",
    "encoder_ffn_embed_dim", "encoder_attention_heads", "activation_fn", "layer_norm_first",
    "deep_norm", "conv_pos", "conv_pos_groups", "relative_position_embedding", "num_buckets",
    "max_distance", "gru_rel_pos")
BEATS_CFG_DROPOUT = ("dropout", "attention_dropout", "activation_dropout", "dropout_input")
# Training settings of the encoder, with their values when a cfg leaves them out (none applied).
BEATS_CFG_TRAINING = {"encoder_layerdrop": 0.0, "layer_wise_gradient_decay_ratio": 1.0}
BEATS_CFG_UNUSED = ("finetuned_model", "predictor_dropout", "predictor_class")
_BEATS_BOOL = ("conv_bias", "layer_norm_first", "deep_norm", "relative_position_embedding",
               "gru_rel_pos")
# Two spellings of the weight-normed positional conv: `nn.utils.weight_norm` (the released
# checkpoints) and `nn.utils.parametrizations.weight_norm` (newer PyTorch).
_BEATS_POS_CONV = {"weight_g": ("encoder.pos_conv.0.weight_g",
                                "encoder.pos_conv.0.parametrizations.weight.original0"),
                   "weight_v": ("encoder.pos_conv.0.weight_v",
                                "encoder.pos_conv.0.parametrizations.weight.original1")}


def beats_model_fields(cfg: Mapping[str, Any]) -> Dict[str, Any]:
  """`models.beats.BEATsEncoder` fields (architecture, dropout rates, layer drop and the
  layer-wise gradient ratio) from a BEATs checkpoint `cfg`. Raises ValueError naming a missing
  architecture key, a key no BEATs cfg has, or a value of the wrong type (bool / int / float /
  activation name) or range. Dropout rates default to 0 when absent, the training settings to
  `BEATS_CFG_TRAINING`'s values; `BEATS_CFG_UNUSED` keys are accepted and dropped."""
  if not isinstance(cfg, Mapping):
    raise ValueError(f"BEATs cfg must be a dict, got {type(cfg).__name__}")
  known = (set(BEATS_CFG_ARCHITECTURE) | set(BEATS_CFG_DROPOUT) | set(BEATS_CFG_TRAINING)
           | set(BEATS_CFG_UNUSED))
  unknown = sorted(k for k in cfg if k not in known)
  if unknown:
    raise ValueError(f"BEATs cfg has unknown keys {unknown}; a BEATs cfg has {sorted(known)}")
  missing = [k for k in BEATS_CFG_ARCHITECTURE if k not in cfg]
  if missing:
    raise ValueError(f"BEATs cfg lacks {missing}: the model cannot be built without them")
  fields = {}
  for key in BEATS_CFG_ARCHITECTURE + BEATS_CFG_DROPOUT:
    value = cfg.get(key, 0.0)
    if key == "activation_fn":
      if value not in ("gelu", "relu"):
        raise ValueError(f"BEATs cfg activation_fn={value!r}: only 'gelu' and 'relu' are built")
    elif key in _BEATS_BOOL:
      if not isinstance(value, (bool, np.bool_)) and value not in (0, 1):
        raise ValueError(f"BEATs cfg {key}={value!r} is not a bool")
      value = bool(value)
    elif key in BEATS_CFG_DROPOUT:
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"BEATs cfg {key}={value!r} is not a rate in [0, 1)")
      value = float(value)
    else:
      if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer))
          or int(value) != value or value < 1):
        raise ValueError(f"BEATs cfg {key}={value!r} is not a positive integer")
      value = int(value)
    fields[key] = value
  for key, default in BEATS_CFG_TRAINING.items():
    value = cfg.get(key, default)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "encoder_layerdrop" and not (number and 0 <= value <= 1):
      raise ValueError(f"BEATs cfg {key}={value!r} is not a probability in [0, 1]")
    if key == "layer_wise_gradient_decay_ratio" and not (number and value > 0):
      raise ValueError(f"BEATs cfg {key}={value!r} is not > 0")
    fields[key] = float(value)
  if fields["deep_norm"] and fields["layer_norm_first"]:
    raise ValueError("BEATs cfg sets both deep_norm and layer_norm_first (they exclude each "
                     "other)")
  if fields["encoder_embed_dim"] % fields["encoder_attention_heads"]:
    raise ValueError(f"BEATs cfg encoder_attention_heads={fields['encoder_attention_heads']} "
                     f"does not divide encoder_embed_dim={fields['encoder_embed_dim']}")
  return fields


def beats_params(state_dict: Mapping[str, Any], cfg: Mapping[str, Any]) -> Dict:
  """Flax `params` of `models.beats.BEATsEncoder` (a `BEATsClassifier`'s `backbone`) from a
  BEATs state dict (the checkpoint's "model") and its cfg.

  Layouts: Conv2d (E, 1, p, p) → (p, p, 1, E); Linear (out, in) → (in, out); LayerNorm weight →
  scale; the positional conv's weight_v (D, D/groups, k) → (k, D/groups, D), weight_g
  (1, 1, k) → (k,); grep_a (1, H, 1, 1) → (H,). The relative-position table is layer 0's (the
  reference shares one module, so a state dict may repeat it under every layer: the copies must
  equal it). A fine-tuned checkpoint's `predictor.*` is dropped when cfg.finetuned_model.

  Raises ValueError listing the missing tensors, the unused ones and those of the wrong shape
  (by their checkpoint names).
  """
  fields = beats_model_fields(cfg)
  state = {k: _np(v) for k, v in state_dict.items()}
  p, e, d = fields["input_patch_size"], fields["embed_dim"], fields["encoder_embed_dim"]
  ffn, heads, layers = (fields["encoder_ffn_embed_dim"], fields["encoder_attention_heads"],
                        fields["encoder_layers"])
  k, groups = fields["conv_pos"], fields["conv_pos_groups"]
  if d % groups:
    raise ValueError(f"BEATs cfg conv_pos_groups={groups} does not divide "
                     f"encoder_embed_dim={d}")
  reader = _StateReader(state)
  take, linear, norm = reader.take, reader.linear, reader.norm

  def take_any(names, shape):
    present = [n for n in names if n in state]
    return take(present[0] if present else names[0], shape)

  patch = {"kernel": np.ascontiguousarray(
      take("patch_embedding.weight", (e, 1, p, p)).transpose(2, 3, 1, 0))}
  if fields["conv_bias"]:
    patch["bias"] = take("patch_embedding.bias", (e,))
  params = {"patch_embedding": patch, "layer_norm": norm("layer_norm", e)}
  if e != d:
    params["post_extract_proj"] = linear("post_extract_proj", d, e)
  encoder = {
      "pos_conv": {
          "weight_g": take_any(_BEATS_POS_CONV["weight_g"], (1, 1, k)).reshape(k),
          "weight_v": np.ascontiguousarray(
              take_any(_BEATS_POS_CONV["weight_v"], (d, d // groups, k)).transpose(2, 1, 0)),
          "bias": take("encoder.pos_conv.0.bias", (d,))},
      "layer_norm": norm("encoder.layer_norm", d),
  }
  table_name = "encoder.layers.0.self_attn.relative_attention_bias.weight"
  for i in range(layers):
    b = f"encoder.layers.{i}"
    attn = {name: linear(f"{b}.self_attn.{name}", d, d)
            for name in ("q_proj", "k_proj", "v_proj", "out_proj")}
    if fields["relative_position_embedding"]:
      copy = f"{b}.self_attn.relative_attention_bias.weight"
      if i == 0:
        attn["relative_attention_bias"] = take(copy, (fields["num_buckets"], heads))
      elif copy in state:
        reader.used.add(copy)
        if table_name in state and not np.array_equal(state[copy], state[table_name]):
          reader.wrong.append(f"{copy}: differs from {table_name} (the table is shared)")
    if fields["gru_rel_pos"]:
      attn["grep_linear"] = linear(f"{b}.self_attn.grep_linear", 8, d // heads)
      attn["grep_a"] = take(f"{b}.self_attn.grep_a", (1, heads, 1, 1)).reshape(heads)
    encoder[f"layers_{i}"] = {
        "self_attn": attn,
        "self_attn_layer_norm": norm(f"{b}.self_attn_layer_norm", d),
        "fc1": linear(f"{b}.fc1", ffn, d),
        "fc2": linear(f"{b}.fc2", d, ffn),
        "final_layer_norm": norm(f"{b}.final_layer_norm", d),
    }
  params["encoder"] = encoder
  ignored = re.compile(r"^predictor\.") if cfg.get("finetuned_model") else None
  reader.check("BEATs state dict does not fit its cfg", ignored)
  return params


def load_beats(path: str) -> Tuple[Dict[str, Any], Dict]:
  """(cfg, `BEATsEncoder` params) of an official BEATs checkpoint (`.pt`: a torch pickle
  {"cfg", "model", "label_dict"}, needs PyTorch) or an `.npz` written by `save_beats_npz`
  (no PyTorch). Raises naming the file and the absent entry for a file of another format."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if path.endswith(".npz"):
    with np.load(path) as f:
      if "__cfg__" not in f.files:
        raise ValueError(f"{path} has no '__cfg__' entry: not written by save_beats_npz")
      cfg = json.loads(str(f["__cfg__"]))
      state = {k: f[k] for k in f.files if k != "__cfg__"}
  else:
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"reading {path} needs PyTorch (pip install torch==2.13.0), or convert it "
                        "to .npz with jax_asc.models.convert.save_beats_npz on a machine that "
                        "has it") from e
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("cfg", "model"):
      if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get(key), Mapping):
        raise ValueError(f"{path} is no BEATs checkpoint: it has no {key!r} dict (a BEATs "
                         "checkpoint is {'cfg', 'model', 'label_dict'})")
    cfg, state = dict(checkpoint["cfg"]), checkpoint["model"]
  try:
    return cfg, beats_params(state, cfg)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def save_beats_npz(cfg: Mapping[str, Any], state_dict: Mapping[str, Any], path: str) -> None:
  """Writes a BEATs checkpoint's cfg and tensors as an `.npz` that `load_beats` reads without
  PyTorch (the cfg as JSON under `__cfg__`)."""
  np.savez(path, __cfg__=np.asarray(json.dumps(dict(cfg))),
           **{k: _np(v) for k, v in state_dict.items()})
