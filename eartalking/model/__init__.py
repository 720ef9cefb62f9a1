"""The PyTorch reference model (imports no torch here, so ``import eartalking.model`` stays light).

Modules (each imports torch):
  tokenizer   portrait-conditioned VQ autoencoder: encode / reference / decode
  audio       streaming audio encoder: raw PCM -> audio tokens (STFT + log-mel inside)
  decoder     StepDecoder: GPT blocks with SFA (sink + window attention) and FCIC control tokens; ``select``
  model       EARTalking container (tokenizer + audio + decoder)
  checkpoint  save / load (config.json + model.safetensors), ``random_model`` for tests
  generate    StreamingGenerator (explicit fixed-size state) and reference_generate (no cache)
Seeded sampling noise lives in ``eartalking.sampling`` (numpy only).
"""

__all__ = ["tokenizer", "audio", "decoder", "model", "checkpoint", "generate"]
