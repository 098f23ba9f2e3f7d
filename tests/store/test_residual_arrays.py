"""Which sites a store keeps beside resid_post and the embeddings, and how their arrays are named."""

from __future__ import annotations

from saezarr.store.residual_arrays import KeptSite, kept_sites


def width_of(hook: str) -> int:
    return 64 if hook.endswith("attn.hook_z") else 32


def test_kept_sites_are_the_saes_other_sites_at_kept_layers_in_site_order():
    hooks = [
        "blocks.3.hook_mlp_out",
        "blocks.1.hook_mlp_out",
        "blocks.1.attn.hook_z",
        "blocks.2.hook_mlp_out",  # layer 2 is not kept
        "blocks.1.hook_resid_post",  # the residuals array holds it
        "blocks.0.hook_resid_pre",  # the embeddings array holds it
        "blocks.3.hook_resid_pre",
        "hook_embed",  # a site of layer 0
    ]
    assert kept_sites(hooks, [0, 1, 3], width_of) == (
        KeptSite("hook_embed", (0,), 32),
        KeptSite("hook_resid_pre", (3,), 32),
        KeptSite("attn.hook_z", (1,), 64),
        KeptSite("hook_mlp_out", (1, 3), 32),
    )
    assert kept_sites(hooks, [2], width_of) == (KeptSite("hook_mlp_out", (2,), 32),)
    assert kept_sites(["blocks.1.hook_resid_post"], [0, 1], width_of) == ()


def test_a_kept_sites_array_is_named_after_its_kind():
    site = KeptSite("attn.hook_z", (1, 3), 64)
    assert (site.name, site.layer_dim) == ("attn_hook_z", "attn_hook_z_layer")
    assert site.width_dim(hidden=32) == "attn_hook_z_width" and site.width_dim(hidden=64) == "hidden"
    assert site.hook(3) == "blocks.3.attn.hook_z" and KeptSite("hook_embed", (0,), 32).hook(0) == "hook_embed"
