"""Transfer learning: weights really loaded, head re-initialised, freezing, LR groups, errors."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from deployment.artifact import quiet_torchscript_deprecation
from lightning_modules.losses import DiceCrossEntropyLoss
from lightning_modules.myocardium_module import MyocardiumSegmentationModule
from lightning_modules.networks.unet import UNet
from lightning_modules.transfer import (
    FineTuning,
    PretrainedShapeError,
    PretrainedWeightsError,
    load_pretrained,
    read_pretrained_state,
)

FILTERS = (4, 8, 16)


def make_module(n_classes: int = 2, filters=FILTERS, lr: float = 1e-2):
    return MyocardiumSegmentationModule(
        net=UNet(n_classes=n_classes, filters=filters, dropout=0.0),
        loss=DiceCrossEntropyLoss(n_classes=n_classes),
        optimizer=lambda params: torch.optim.Adam(params, lr=lr),
        n_classes=n_classes,
    )


def ring_batches(n: int = 4, size: int = 32) -> list[dict[str, torch.Tensor]]:
    """Bright rings on noise: images [1, size, size] with their masks (label 1 = ring)."""
    generator = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((y - size / 2) ** 2 + (x - size / 2) ** 2).sqrt()
    mask = ((r > 5) & (r < 9)).long()
    image = mask.float() + 0.3 * torch.randn(n, 1, size, size, generator=generator)
    return [{"image": image[i], "mask": mask} for i in range(n)]


@pytest.fixture(scope="module")
def pretrained_ckpt(tmp_path_factory):
    """A real Lightning checkpoint of a U-Net trained for 2 steps (the 'N0' of these tests)."""
    tmp_path = tmp_path_factory.mktemp("n0")
    module = make_module()
    trainer = pl.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=DataLoader(ring_batches(), batch_size=2))
    path = tmp_path / "n0.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    return path, {k: v.clone() for k, v in module.net.state_dict().items()}


def test_checkpoint_weights_are_really_loaded(pretrained_ckpt, tmp_path):
    path, source = pretrained_ckpt
    module = make_module()
    assert not torch.equal(module.net.encoders[0][0].weight, source["encoders.0.0.weight"])
    report = FineTuning(pretrained=str(path), report_out=str(tmp_path / "r.json")).apply_to(module)
    for name, tensor in module.net.state_dict().items():
        assert torch.equal(tensor, source[name]), name
    assert sorted(report.loaded) == sorted(source) and not report.left_random
    assert json.loads((tmp_path / "r.json").read_text())["loaded"] == report.loaded


def test_head_is_reinitialised_when_the_class_count_differs(pretrained_ckpt):
    path, source = pretrained_ckpt
    module = make_module(n_classes=3)  # e.g. background / myocardium / blood pool
    report = FineTuning(pretrained=str(path)).apply_to(module)
    state = module.net.state_dict()
    assert sorted(report.left_random) == ["head.bias", "head.weight"]
    assert sorted(report.skipped) == ["head.bias", "head.weight"]
    assert state["head.weight"].shape == (3, 4, 1, 1)
    assert torch.equal(state["decoders.1.block.0.weight"], source["decoders.1.block.0.weight"])
    assert all(torch.equal(state[n], source[n]) for n in report.loaded)


def test_head_can_be_excluded_even_when_it_fits(pretrained_ckpt):
    path, source = pretrained_ckpt
    module = make_module()
    report = FineTuning(pretrained=str(path), exclude_head=True).apply_to(module)
    assert sorted(report.left_random) == ["head.bias", "head.weight"]
    assert not torch.equal(module.net.head.weight, source["head.weight"])


def test_a_shape_mismatch_names_the_tensor_and_both_shapes(pretrained_ckpt):
    path, _ = pretrained_ckpt
    wider = make_module(filters=(4, 8, 32))
    with pytest.raises(PretrainedShapeError, match=r"'bottleneck\.0\.weight'.*\(16, 8, 3, 3\)"):
        FineTuning(pretrained=str(path)).apply_to(wider)
    head = r"'head\.weight'.*\(2, 4, 1, 1\).*\(3, 4, 1, 1\)"
    with pytest.raises(PretrainedShapeError, match=head):
        FineTuning(pretrained=str(path), exclude_head=False).apply_to(make_module(n_classes=3))


def test_frozen_levels_are_unchanged_after_an_optimiser_step_while_the_others_change(
    pretrained_ckpt,
):
    path, _ = pretrained_ckpt
    module = make_module()
    report = FineTuning(pretrained=str(path), freeze_levels=1).apply_to(module)
    assert report.frozen and all(name.startswith("encoders.0.") for name in report.frozen)
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    optimizer = module.configure_optimizers()["optimizer"]
    module.train()
    batch = ring_batches(2)
    image = torch.stack([b["image"] for b in batch])
    mask = torch.stack([b["mask"] for b in batch])
    module.loss(module(image), mask).backward()
    optimizer.step()
    after = module.net.state_dict()
    for name in before:
        frozen = name.startswith("encoders.0.")  # weights and BN statistics alike
        if name.endswith("num_batches_tracked"):
            continue
        assert torch.equal(before[name], after[name]) == frozen, name


def test_whole_encoder_freeze_and_a_separate_lr_for_pretrained_layers(pretrained_ckpt):
    path, _ = pretrained_ckpt
    module = make_module(n_classes=3, lr=1e-3)
    FineTuning(pretrained=str(path), freeze_encoder=True, pretrained_lr=1e-5).apply_to(module)
    frozen = {n for n, p in module.net.named_parameters() if not p.requires_grad}
    assert {n.split(".")[0] for n in frozen} == {"encoders", "bottleneck"}
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-5]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in module.net.head.parameters()}
    n_decoder = sum(1 for n, _ in module.net.named_parameters() if n.startswith("decoders."))
    assert len(groups[1]["params"]) == n_decoder


class _Wrapped(nn.Module):
    """Stands for the exported artifact: the network as ``net``, probabilities out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).softmax(1)


def test_an_exported_torchscript_artifact_seeds_the_network(tmp_path):
    source = UNet(filters=FILTERS).eval()
    with quiet_torchscript_deprecation():
        scripted = torch.jit.script(_Wrapped(source))
        torch.jit.save(scripted, str(tmp_path / "n0.ts"))
        frozen = torch.jit.freeze(torch.jit.script(_Wrapped(source).eval()))
        torch.jit.save(frozen, str(tmp_path / "f.ts"))
    module = make_module()
    FineTuning(pretrained=str(tmp_path / "n0.ts")).apply_to(module)
    for name, tensor in source.state_dict().items():
        assert torch.equal(module.net.state_dict()[name], tensor), name
    with pytest.raises(PretrainedWeightsError, match="frozen at export"):
        read_pretrained_state(tmp_path / "f.ts")


def test_unusable_files_and_names_are_clear_errors(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="no such"):
        read_pretrained_state(tmp_path / "missing.ckpt")
    (tmp_path / "weights.h5").write_bytes(b"")
    with pytest.raises(PretrainedWeightsError, match=r"\.ckpt.*\.ts"):
        read_pretrained_state(tmp_path / "weights.h5")
    net = UNet(filters=FILTERS)
    state = {**net.state_dict(), "extra.weight": torch.zeros(1)}
    with pytest.raises(PretrainedWeightsError, match="'extra.weight'"):
        load_pretrained(net, state)
    report = load_pretrained(net, state, strict=False)
    assert report.skipped == {"extra.weight": "not in the network"}
