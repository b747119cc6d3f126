"""String settings as Enums: they parse from words, compare and hash as words, print as words."""

from __future__ import annotations

import json

import pytest
import yaml

from adaround_lightning import AdaroundConfig, Granularity, QuantConfig, Reconstruction, ScaleMethod
from adaround_lightning.core.choices import Choice
from adaround_lightning.quant.activations import ActObserver


class Colour(Choice):
    RED = "red"
    BLUE = "blue"


def test_a_member_is_its_word_in_every_form() -> None:
    assert Colour.parse("red", "colour") is Colour.RED
    assert Colour.RED == "red" and f"{Colour.RED}" == "red" and str(Colour.BLUE) == "blue"
    assert json.dumps({"c": Colour.RED}) == '{"c": "red"}'
    assert {"red": 1}[Colour.RED] == 1 and {Colour.RED: 1}["red"] == 1
    assert Colour.words() == ("red", "blue")


def test_an_unknown_word_names_the_setting_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"^colour must be one of red, blue, got 'green'$"):
        Colour.parse("green", "colour")


@pytest.mark.parametrize(
    ("make", "attribute", "expected"),
    [
        (lambda: AdaroundConfig(granularity="layer"), "granularity", Granularity.LAYER),
        (lambda: AdaroundConfig(reconstruction="mean"), "reconstruction", Reconstruction.MEAN),
        (lambda: QuantConfig(scale_method="mse"), "scale_method", ScaleMethod.MSE),
        (lambda: QuantConfig(act_observer="mse"), "act_observer", ActObserver.MSE),
    ],
)
def test_configs_hold_members_that_read_as_plain_words(make, attribute, expected) -> None:
    value = getattr(make(), attribute)
    assert value is expected
    assert yaml.safe_dump({attribute: str(value)}).strip() == f"{attribute}: {expected.value}"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: AdaroundConfig(granularity="net"), "adaround.granularity must be one of"),
        (lambda: AdaroundConfig(reconstruction="sum"), "adaround.reconstruction must be one of"),
        (lambda: QuantConfig(scale_method="p99"), "quant.scale_method must be one of"),
        (lambda: QuantConfig(act_observer="kl"), "quant.act_observer must be one of"),
    ],
)
def test_configs_reject_unknown_words(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
