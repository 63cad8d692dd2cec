import pytest


@pytest.fixture
def sgd_lrs(monkeypatch):
    """The learning rate of every ``ablations.optim.SGD`` step taken in the test, in order."""
    from ablations import optim
    seen = []
    real_step = optim.SGD.step

    def spy(self):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self)
    monkeypatch.setattr(optim.SGD, "step", spy)
    return seen
