"""values.py: the optimizer package's one contact with tensors that carry no values."""
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from ngl_profile.optim.values import has_values, outside_dispatch_modes, real_constants


def test_has_values():
    assert has_values(torch.zeros(2))
    assert not has_values(torch.empty(2, device="meta"))
    with FakeTensorMode():
        fake = torch.zeros(2)
    assert not has_values(fake)


def test_real_constants_under_fake_mode():
    with FakeTensorMode():
        with real_constants():
            real = torch.arange(3)
        fake = torch.arange(3)
    assert has_values(real) and real.tolist() == [0, 1, 2]
    assert not has_values(fake)


def test_outside_dispatch_modes_hides_the_mode_for_its_body():
    seen = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    x = torch.ones(3)
    with Spy():
        x + 1
        with outside_dispatch_modes():
            x * 2
    with outside_dispatch_modes():  # no mode active: a no-op
        x * 3
    assert [f.__name__ for f in seen] == ["add.Tensor"]
