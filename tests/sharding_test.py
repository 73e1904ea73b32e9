"""anda_jax.sharding: evaluation over a ("config", "model") mesh of 8 forced host devices gives
the single-device perplexities, with each device holding 1/model_shards of a split weight."""

from absl.testing import absltest
from jax.tree_util import DictKey, GetAttrKey
import numpy as np

from anda_jax import models
from anda_jax.numerics.anda import AndaFormat
from anda_jax import sharding
import testlib

# M = 0 (float) first, then Anda configurations.
_CONFIGS = [[0, 0, 0, 0], [4, 4, 4, 4], [8, 6, 7, 5], [3, 0, 0, 9]]


class MeshTest(absltest.TestCase):

  def test_make_mesh_checks_the_shape(self):
    self.assertIsNone(sharding.make_mesh())  # one device here: no mesh
    for bad in ((2, 4), (0, 1), (1,), (1.0, 1)):
      with self.assertRaisesRegex(ValueError, r"mesh=.* is invalid"):
        sharding.make_mesh(bad)


class ModelShardedEvaluationTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = testlib.tempdir(cls)
    # K of o (64) and down (128) split into 8 shards of 8 and 16: whole groups of G = 8 and of
    # the INT4 scales (Gw = 8); N of qkv (128) and gate/up (256) split evenly.
    cls.ckpt = testlib.make_checkpoint(cls.tmp / "ckpt", d_model=64, n_heads=4, n_kv_heads=2, d_ff=128)

  def test_meshes_agree_with_one_device_and_split_the_weights(self):
    windows = np.random.default_rng(0).integers(0, 256, (3, 24))
    np.save(self.tmp / "windows.npy", windows)
    script = f"""
        import json
        import jax
        import numpy as np
        from anda_jax import models, sharding
        from anda_jax.evaluation import evaluate
        from anda_jax.numerics.anda import AndaFormat
        from anda_jax.matmul import ProductSpec
        from flax import nnx
        model, _ = models.load({str(self.ckpt)!r}, int4_group_size=8)
        windows = np.load({str(self.tmp / 'windows.npy')!r})
        configs = np.array({_CONFIGS})
        spec = ProductSpec(AndaFormat(group_size=8))
        out = dict(devices=jax.device_count(),
                   single=evaluate.perplexity(model, windows, configs, spec, mesh=None).tolist())
        for shape in ((8, 1), (2, 4), (1, 8)):
          mesh = sharding.make_mesh(shape)
          ppl = evaluate.perplexity(model, windows, configs, spec, mesh=mesh)
          _, state = nnx.split(model)
          placed = sharding.place(state, mesh, lambda p, x: sharding.weight_spec(p, x, mesh, spec.formats))
          layers = placed["layers"].get_value()
          fractions = {{site: [s.data.size / w.size for s in w.addressable_shards]
                       for site, w in (("o", layers["o"].packed), ("up", layers["up"].packed),
                                       ("down", layers["down"].scale), ("attn_norm", layers["attn_norm"]))}}
          out[str(shape)] = dict(ppl=ppl.tolist(), fractions=fractions)
        print(json.dumps(out))
        """
    out = testlib.run_with_cpu_devices(self, script, 8, timeout=600)
    self.assertEqual(out["devices"], 8)
    single = np.array(out["single"])
    for shape, model_shards in (("(8, 1)", 1), ("(2, 4)", 4), ("(1, 8)", 8)):
      ppl = np.array(out[shape]["ppl"])
      # Float configurations: only the order of the row-parallel partial sums changes.
      np.testing.assert_allclose(ppl[0], single[0], rtol=1e-5, err_msg=shape)
      # Anda: a reordered float sum can move an activation across a rounding boundary of the
      # next product's quantizer, so a looser bound (still far below the effects measured).
      np.testing.assert_allclose(ppl[1:], single[1:], rtol=1e-3, err_msg=shape)
      fractions = out[shape]["fractions"]
      for site in ("o", "up", "down"):
        self.assertEqual(set(fractions[site]), {1 / model_shards}, (shape, site))
      self.assertEqual(set(fractions["attn_norm"]), {1.0}, shape)  # replicated

  def test_config_shards_change_no_bit(self):
    # Each device evaluates whole configurations, so a run on config shards gives the sums of
    # one device, bit for bit, also with stochastic rounding, whose draws follow the window
    # batches: the automatic window batch is sized for the configurations asked for (3 here),
    # not for their rounding up to the 2 devices (4). A small logits budget makes it 2 windows.
    windows = np.random.default_rng(1).integers(0, 256, (5, 24))
    np.save(self.tmp / "windows_cfg.npy", windows)
    script = f"""
        import json
        import jax
        import numpy as np
        from anda_jax import models, sharding
        from anda_jax.evaluation import evaluate
        from anda_jax.numerics.anda import AndaFormat
        from anda_jax.matmul import ProductSpec
        evaluate.LOGITS_BUDGET_BYTES = 4 * 3 * 24 * 256 * 2
        model, _ = models.load({str(self.ckpt)!r}, int4_group_size=8)
        windows = np.load({str(self.tmp / 'windows_cfg.npy')!r})
        configs = np.array([[4, 4, 4, 4], [8, 6, 7, 5], [3, 0, 0, 9]])
        spec = ProductSpec(AndaFormat(group_size=8, rounding="stochastic"))
        key = jax.random.key(0)
        out = {{}}
        for name, mesh in (("one", None), ("config_shards", sharding.make_mesh((2, 1)))):
          sums, _ = evaluate.window_nll_sums(model, windows, configs, spec, config_batch=3, key=key,
                                             mesh=mesh)
          out[name] = sums.tolist()
        print(json.dumps(out))
        """
    out = testlib.run_with_cpu_devices(self, script, 2)
    self.assertEqual(out["config_shards"], out["one"])

  def test_row_parallel_shard_must_hold_whole_groups(self):
    model, _ = models.load(self.ckpt, int4_group_size=8)
    packed = model.layers.get_value()["o"].packed  # K = 64: 8 shards of 8
    path = (DictKey("layers"), GetAttrKey("value"), DictKey("o"), GetAttrKey("packed"))

    class EightModelShards:
      shape = {"config": 1, "model": 8}

    # [layers, K / 2, N]: split along K.
    self.assertEqual(tuple(sharding.weight_spec(path, packed, EightModelShards, (AndaFormat(group_size=8),) * 4)),
                     (None, "model"))
    with self.assertRaisesRegex(ValueError, r"K = 64 splits into 8 model shards of 8, which is not a "
                                            r"multiple of the activation group size G = 16"):
      sharding.weight_spec(path, packed, EightModelShards, (AndaFormat(group_size=16),) * 4)


if __name__ == "__main__":
  absltest.main()
