"""The number formats, as pure functions of arrays (defined in docs/formats.md):

  anda.py       Anda: encode / decode / fake quantization (sections 1)
  bitplane.py   the bit-plane layout of an Anda encoding (section 2)
  int4.py       group INT4 weights: RTN, nibble packing, GGUF 4-bit blocks (section 3)
  bitserial.py  the bit-serial FP x INT4 product, pure jnp (section 4)
  baselines.py  the formats Anda is compared with: OCP MX, NVFP4, per-token FP8 / INT8 (sections 5-7)
"""
