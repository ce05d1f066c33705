"""dflash-trt: DFlash block-diffusion speculative decoding for the TensorRT stack."""

__version__ = "0.1.0"
