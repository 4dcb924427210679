"""Regression: Fed-LTD's Laplace clipping range must be finite (an infinite weight bound gave
an infinite Laplace scale without complaint)."""
import math

import numpy as np
import pytest

from fedrl.config import ConfigError
from fedrl.fedltd.config import FedLTDConfig


@pytest.mark.parametrize("change", [{"weight_upper": math.inf}, {"weight_lower": -math.inf},
                                    {"weight_lower": math.nan}, {"weight_upper": "60"}])
def test_non_finite_weight_bounds_are_refused(change):
    with pytest.raises(ConfigError, match="finite"):
        FedLTDConfig(**change).validate()


def test_numpy_scalars_are_accepted():
    FedLTDConfig(weight_lower=np.float32(0.0), weight_upper=np.float64(30.0),
                 epsilon_p=np.float32(0.5)).validate()
    with pytest.raises(ConfigError, match="epsilon_p"):
        FedLTDConfig(epsilon_p=np.float32(-1.0)).validate()
