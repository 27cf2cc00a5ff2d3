"""Errors name the bad value cut to a readable length, and numbers too large for a float are
refused like any other bad number (issue 25)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic_core import PydanticCustomError

from engine.core.contract import as_integer, finite_number, iso_or_unix
from engine.core.errors import InvalidInput, NotFound, Problem, readable, shown


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (5, "5"),
        ("abc", "'abc'"),
        (10**400, "10000000000000000000… (401 digits)"),
        (-(10**400), "-10000000000000000000… (401 digits)"),
        ("x" * 100, "'" + "x" * 59 + "… (102 characters)"),
        (float("inf"), "inf"),
    ],
)
def test_values_are_shown_cut_to_a_readable_length(value: object, text: str) -> None:
    assert shown(value) == text


def test_an_integer_past_python_s_digit_limit_is_shown_by_its_size() -> None:
    assert shown(10**5_000) == "an integer of about 5,000 digits"


def test_every_message_is_cut_wherever_it_was_written() -> None:
    # A value echoed without shown() (a 400-digit k, a 100 kB id) is cut the same way.
    assert str(NotFound(f"job {10**400}")) == "job " + "1" + "0" * 59 + "… (401 characters)"
    problem = Problem("k" * 300, f"must be at most 100, got {10**400} (an integer)")
    assert problem.field == "k" * 60 + "… (300 characters)"
    assert problem.message.endswith("… (401 characters) (an integer)")
    assert str(InvalidInput("words " * 1_000)).endswith("… (6,000 characters)")
    assert readable("a message in words") == "a message in words"


def test_lone_surrogates_in_a_message_are_escaped() -> None:
    problem = Problem("filters.\udfff", "unknown field '\ud800'")
    assert problem.field == "filters.\\udfff"
    assert (problem.field + problem.message).encode("utf-8")


@pytest.mark.parametrize("value", [10**400, -(10**400), "1" + "0" * 400, "1e400", float("inf")])
def test_unix_seconds_beyond_a_double_are_out_of_range(value: Any) -> None:
    with pytest.raises(PydanticCustomError) as caught:
        iso_or_unix(value)
    assert "out of range" in caught.value.message()
    assert len(caught.value.message()) < 130


def test_numbers_beyond_a_double_are_refused_and_shown_short() -> None:
    with pytest.raises(PydanticCustomError) as caught:
        finite_number(10**400)
    assert caught.value.message().endswith("got int 10000000000000000000… (401 digits)")
    with pytest.raises(PydanticCustomError) as caught:
        as_integer("9" * 5_000)  # past int_max_str_digits: int() refuses it
    assert caught.value.message() == "is an integer of 5,000 digits, beyond every limit of the API"
