"""PaSST in Flax: shapes, patchout, parameter count, and parity with the PyTorch reference.

The parity tests need PyTorch 2.13.0 and `hear21passt` (installed by `.ci/run` via
`make reference-deps`); they skip with the reason where those are absent.
"""
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_asc.audio import frontends
from jax_asc.models import convert
from jax_asc.models.passt import PaSST

TINY = dict(embed_dim=32, depth=2, num_heads=4, input_size=(128, 100), n_classes=10)


def _hear21passt():
  """hear21passt's model and frontend modules, or a skip naming what is missing."""
  torch = pytest.importorskip("torch", reason="PyTorch not installed (make reference-deps)")
  if torch.__version__.split("+")[0] != "2.13.0":
    pytest.skip(f"parity tests are pinned to torch 2.13.0, found {torch.__version__}")
  try:
    import timm  # noqa: F401
  except ImportError:
    # hear21passt imports timm only for `download_cached_file` (fetching released weights),
    # which these tests never call; timm itself needs a matching torchvision build.
    hub = types.ModuleType("timm.models._hub")
    hub.download_cached_file = lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("no downloads in tests"))
    for name in ("timm", "timm.models"):
      sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["timm.models._hub"] = hub
  passt = pytest.importorskip("hear21passt.models.passt",
                              reason="hear21passt not installed (make reference-deps)")
  preprocess = pytest.importorskip("hear21passt.models.preprocess")
  return torch, passt, preprocess


def test_shapes_features_and_patchout():
  model = PaSST(**TINY, s_patchout_t=3, s_patchout_f=2)
  x = jnp.zeros((2, 128, 100))
  variables = model.init(jax.random.key(0), x)
  assert model.grid_size == (12, 10)
  out = model.apply(variables, x, return_features=True)
  assert out["logits"].shape == (2, 10) and out["tokens"].shape == (2, 2 + 12 * 9, 32)
  trained = model.apply(variables, x, train=True, return_features=True,
                        rngs={"patchout": jax.random.key(1)})
  assert trained["tokens"].shape == (2, 2 + 10 * 6, 32)
  with pytest.raises(ValueError, match="grid"):
    model.apply(variables, jnp.zeros((2, 128, 200)))


def test_passt_s_parameter_count():
  """PaSST-S (stride 10, 128×998): 86.1 M parameters without the unused head_dist."""
  shapes = jax.eval_shape(lambda x: PaSST().init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 128, 998), jnp.float32))
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"]))
  # 12 blocks × 7,087,872 + patch 197,376 + pos (12 + 99 + 2)·768 + 2·768 tokens + norm 1,536
  # + head LayerNorm 1,536 + Linear 768·527 + 527.
  expected = 12 * 7_087_872 + 197_376 + 113 * 768 + 2 * 768 + 1_536 + 1_536 + 768 * 527 + 527
  assert n == expected


def test_logits_match_hear21passt():
  torch, passt, _ = _hear21passt()
  torch.manual_seed(0)
  reference = passt.PaSST(img_size=(128, 100), patch_size=16, stride=10, num_classes=10,
                          embed_dim=32, depth=2, num_heads=4, distilled=True).eval()
  with torch.no_grad():   # non-trivial values for parameters initialised to constants
    for name, p in reference.named_parameters():
      if "norm" in name or name.startswith(("head", "cls", "dist")) or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  state = reference.state_dict()
  settings = convert.passt_settings(state)
  assert settings == {"embed_dim": 32, "patch_size": 16, "depth": 2, "n_classes": 10,
                      "grid_f": 12, "grid_t": 10}
  params = convert.passt_params(state)
  x = np.random.default_rng(0).normal(size=(3, 128, 100)).astype(np.float32)
  with torch.no_grad():
    expected, features = reference(torch.from_numpy(x)[:, None])
  out = PaSST(**TINY).apply({"params": params}, jnp.asarray(x), return_features=True)
  np.testing.assert_allclose(out["logits"], expected.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(out["embedding"], features.numpy(), atol=1e-4, rtol=0)
  # Shorter input: both cut the time positional embedding to the first columns.
  with torch.no_grad():
    expected_short, _ = reference(torch.from_numpy(x[:, :, :60])[:, None])
  short = PaSST(**TINY).apply({"params": params}, jnp.asarray(x[:, :, :60]))
  np.testing.assert_allclose(short, expected_short.numpy(), atol=1e-4, rtol=0)


def test_converter_names_missing_and_unused_tensors():
  torch, passt, _ = _hear21passt()
  state = passt.PaSST(img_size=(128, 100), stride=10, num_classes=10, embed_dim=32, depth=1,
                      num_heads=4, distilled=True).state_dict()
  broken = dict(state)
  del broken["blocks.0.attn.qkv.bias"]
  with pytest.raises(KeyError, match="blocks.0.attn.qkv.bias"):
    convert.passt_params(broken)
  with pytest.raises(KeyError, match="extra.weight"):
    convert.passt_params(dict(state, **{"extra.weight": state["norm.weight"]}))


def test_frontend_matches_hear21passt(tmp_path):
  torch, _, preprocess = _hear21passt()
  reference = preprocess.AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320,
                                        n_fft=1024, freqm=48, timem=192, fmin=0.0, fmax=None,
                                        fmin_aug_range=10, fmax_aug_range=2000).eval()
  wave = np.random.default_rng(1).normal(scale=0.1, size=(2, 32000)).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(wave)).numpy()
  ours = np.asarray(frontends.log_mel(jnp.asarray(wave), frontends.PASST))
  assert ours.shape == expected.shape == (2, 128, 100)
  np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


def test_npz_round_trip(tmp_path):
  params = PaSST(**TINY).init(jax.random.key(0), jnp.zeros((1, 128, 100)))["params"]
  flat = {"norm.weight": np.asarray(params["norm"]["scale"])}
  convert.save_npz(flat, str(tmp_path / "c.npz"))
  loaded = convert.load_torch_state_dict(str(tmp_path / "c.npz"))
  np.testing.assert_array_equal(loaded["norm.weight"], flat["norm.weight"])
  with pytest.raises(FileNotFoundError, match="missing.pt"):
    convert.load_torch_state_dict(str(tmp_path / "missing.pt"))


def test_lightning_checkpoint_with_prefix_loads_through_model_init(tmp_path):
  """A fine-tuned teacher saved by Lightning (`{"state_dict": {"net.…": …}}`) initialises the
  Flax PaSST through config.model_init with prefix "net."; without the prefix the converter
  names the tensors it does not know."""
  torch, passt, _ = _hear21passt()
  from configs import common
  from jax_asc.stages import model_init
  from jax_asc.train.state import TrainState
  torch.manual_seed(0)
  reference = passt.PaSST(img_size=(128, 100), stride=10, num_classes=10, embed_dim=32, depth=2,
                          num_heads=4, distilled=True)
  state = reference.state_dict()
  path = str(tmp_path / "teacher.ckpt")
  torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()}, "epoch": 3}, path)
  fresh = PaSST(**TINY).init(jax.random.key(1), jnp.zeros((1, 128, 100)))["params"]
  train_state = TrainState(step=jnp.zeros((), jnp.int32), params=fresh, batch_stats={},
                           opt_state=None, ema_params=None, rng=jnp.zeros((2,), jnp.uint32))
  config = common.base_config()
  config.model_init.update(path=path, kind="passt_torch", prefix="net.")
  loaded = model_init.pretrained_initializer(config)(train_state).params
  expected = convert.passt_params(state)
  jax.tree.map(np.testing.assert_array_equal, loaded, expected)
  config.model_init.prefix = ""
  with pytest.raises(KeyError, match=r"has 'net\..*': set the name prefix, "
                                     r"model_init.prefix='net\.'"):
    model_init.pretrained_initializer(config)(train_state)
  config.model_init.update(kind="run", prefix="net.")
  with pytest.raises(ValueError, match="applies to kind 'passt_torch' only"):
    model_init.pretrained_initializer(config)
