"""SAEs of every supported format behind one encoder contract.

`formats` is the registry of SAE formats, one module each (`gemma_scope`: Gemma Scope 1 `params.npz`;
`gemma_scope_2`: Gemma Scope 2 `params.safetensors`; `saelens`: SAELens `cfg.json` + `sae_weights.safetensors`;
`llama_scope`: `hyperparams.json` + `checkpoints/final.safetensors`; `dictionary_learning`: `ae.pt` + `config.json`;
`sparsify`: `cfg.json` + `sae.safetensors`; `llama_scope_r1_distill`: `config.json` + `sae_weights.safetensors`;
SAEs that are one file: `qwen_scope` `layer{L}.sae.pt`, `mwhanna_transcoder` `layer_{L}.safetensors`,
`connor_rob_hook_z` `{name}.pt` + `{name}_cfg.json`, `deepseek_r1` and `goodfire` `{model}-SAE-l{L}.pt`; `temporal`
and `mntss_clt_layer_transcoder` recognise and refuse theirs), and `activations` the registry of activation functions
an SAE's `architecture` names (`gated`, `jumprelu`, `log_jumprelu`, `relu`, `topk`); `normalise` holds SAELens' input normalisations;
other packages add either through the `saezarr.sae_formats` and `saezarr.activations` entry-point groups. `locate`
finds an SAE's files and asks the formats, in their order of trying, to read them into a
`description.SAEDescription`; `encoder` encodes activations with it and its activation function, whole on the
device or in feature tiles streamed from memory-mapped weights. Nothing is imported here, and neither registry
imports torch, so importing the package does not import torch.
"""
