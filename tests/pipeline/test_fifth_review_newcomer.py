"""A newcomer's slips caught where they are made: a method in capitals gets its name suggested,
and a device typo is refused by the constructor, not after the model has run."""
import pytest

import conceptkit
from conceptkit._validation import check_choice
from conceptkit.datasets import reference_model


def test_a_choice_in_other_letters_suggests_the_option():
    with pytest.raises(ValueError, match=r"got 'ICE'\. Did you mean 'ice'\?"):
        check_choice("ICE", "method", ("craft", "ice", "ace"))
    with pytest.raises(ValueError, match=r"Did you mean 'ice'\?"):
        conceptkit.ConceptExplainer(reference_model(), "block4", method="ICE")


def test_a_device_typo_is_refused_by_the_constructor():
    with pytest.raises(ValueError, match=r"`device` must be a torch device .*'cdua'"):
        conceptkit.ConceptExplainer(reference_model(), "block4", device="cdua")
