"""models.load's errors name its own argument, `spec`; the command line says `--model`."""
import pytest

from conceptkit import models


@pytest.mark.parametrize("spec, error", [("keras:resnet", ValueError), (3, TypeError)])
def test_python_errors_name_spec(spec, error):
    with pytest.raises(error, match=r"^`spec` must be"):
        models.load(spec)
