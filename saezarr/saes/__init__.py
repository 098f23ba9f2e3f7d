"""SAEs of every supported format behind one encoder contract.

`locate` finds an SAE's files and reads its format (`formats.gemma_scope`: Gemma Scope 1 `params.npz`;
`formats.gemma_scope_2`: Gemma Scope 2 `params.safetensors`; `formats.saelens`: SAELens `cfg.json` +
`sae_weights.safetensors`) into a `description.Description`; `encoder` encodes activations with it, whole on the
device or in feature tiles streamed from memory-mapped weights. Nothing is imported here, so importing the package
does not import torch.
"""
