"""SAEs of every supported layout behind one encoder contract.

`locate` finds an SAE's files and reads its layout (`gemma_scope`: Gemma Scope 1 `params.npz`; `gemma_scope_2`:
Gemma Scope 2 `params.safetensors`; `saelens`: SAELens `cfg.json` + `sae_weights.safetensors`), `encoder` encodes
residuals with it, whole on the device or in feature tiles streamed from memory-mapped weights. Nothing is imported
here, so readers of `npyzip` (export) do not import torch.
"""
