"""mmprompt.core.modes: switching train/eval mode for a block."""

import pytest


def test_training_mode_restores_the_mode_also_after_an_error():
    import torch.nn as nn

    from mmprompt.core.modes import training_mode

    net = nn.Sequential(nn.Dropout(0.5)).train()
    with training_mode(net, False):
        assert not net.training and not net[0].training
    assert net.training and net[0].training
    net.eval()
    with pytest.raises(RuntimeError), training_mode(net, True):
        assert net.training
        raise RuntimeError("boom")
    assert not net.training
