import pytest

from b3core.errors import B3Error
from b3core.spec.sizes import around_powers_of_two, is_power_of_two, parse_batch_sizes

pytestmark = pytest.mark.untimed  # nothing here asserts on speed


@pytest.mark.parametrize(
    "text,expected",
    [
        ("100,127,128,129,156", [100, 127, 128, 129, 156]),
        ("1-5", [1, 2, 3, 4, 5]),
        ("8-32:8", [8, 16, 24, 32]),
        ("16,1-3,16", [1, 2, 3, 16]),
        (" 7 ", [7]),
    ],
)
def test_parse_batch_sizes(text, expected):
    assert parse_batch_sizes(text) == expected


def test_full_range_1_to_512():
    assert parse_batch_sizes("1-512") == list(range(1, 513))


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("", "empty"),
        (" , ", "empty"),
        ("512-1", "inverted"),
        ("0,4", "positive"),
        ("0-4", "positive"),
        ("-3", "positive"),
        ("abc", "cannot read"),
        ("4-8:0", "step"),
    ],
)
def test_bad_batch_sizes_are_clear_errors(text, fragment):
    with pytest.raises(B3Error, match=fragment):
        parse_batch_sizes(text)


def test_alignment_helpers():
    assert [n for n in range(1, 20) if is_power_of_two(n)] == [1, 2, 4, 8, 16]
    assert around_powers_of_two(10, 40) == [15, 16, 17, 31, 32, 33]
