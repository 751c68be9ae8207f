"""Class-table tests: the class tables derived from the 5.17 formulas (chain 4, and chain 8 with
both page-count rules), embedded as data; docs/zsmalloc.md, "Size classes, merging and the huge
class", says how they are derived and how to print them.

Rows are "index size pages objs waste [aliases lo..hi]", the shape that page's snippet prints.
"""

from __future__ import annotations

from typing import Any

import pytest

from allocator.sizeclass import (
    ZS_ALMOST_EMPTY,
    ZS_ALMOST_FULL,
    ZS_EMPTY,
    ZS_FULL,
    almost_empty_limit,
    build_class_table,
    get_fullness_group,
)

CHAIN4_MAX_USED = """
   0    32  1  128     0
   1    48  3  256     0
   2    64  1   64     0
   3    80  1   51    16
   4    96  3  128     0
   5   112  2   73    16
   6   128  1   32     0
   7   144  3   85    48
   8   160  2   51    32
   9   176  4   93    16
  10   192  3   64     0
  11   208  2   39    80
  12   224  4   73    32
  13   240  1   17    16
  14   256  1   16     0
  15   272  1   15    16
  16   288  1   14    64
  17   304  3   40   128
  18   320  4   51    64
  19   336  1   12    64
  20   352  2   23    96
  21   368  1   11    48
  22   384  3   32     0
  23   400  1   10    96
  24   416  4   39   160
  25   432  3   28   192
  26   448  1    9    64
  27   464  4   35   144
  28   480  2   17    32
  29   496  4   33    16
  30   512  1    8     0
  31   528  4   31    16
  32   544  2   15    32
  33   560  4   29   144
  34   576  1    7    64
  35   592  4   27   400
  36   608  3   20   128
  37   624  2   13    80
  38   640  3   19   128
  40   672  1    6    64  aliases 39..39
  42   704  4   23   192  aliases 41..41
  43   720  3   17    48
  44   736  2   11    96
  46   768  3   16     0  aliases 45..45
  49   816  1    5    16  aliases 47..48
  51   848  4   19   272  aliases 50..50
  52   864  3   14   192
  54   896  2    9   128  aliases 53..53
  57   944  3   13    16  aliases 55..56
  58   960  4   17    64
  62  1024  1    4     0  aliases 59..61
  66  1088  4   15    64  aliases 63..65
  67  1104  3   11   144
  71  1168  2    7    16  aliases 68..70
  74  1216  3   10   128  aliases 72..73
  76  1248  4   13   160  aliases 75..75
  83  1360  1    3    16  aliases 77..82
  91  1488  4   11    16  aliases 84..90
  94  1536  3    8     0  aliases 92..93
 100  1632  2    5    32  aliases 95..99
 107  1744  3    7    80  aliases 101..106
 111  1808  4    9   112  aliases 108..110
 126  2048  1    2     0  aliases 112..125
 144  2336  4    7    32  aliases 127..143
 151  2448  3    5    48  aliases 145..150
 168  2720  2    3    32  aliases 152..167
 190  3072  3    4     0  aliases 169..189
 202  3264  4    5    64  aliases 191..201
 254  4096  1    1     0  aliases 203..253
"""

CHAIN8_MAX_USED = """
   0    32  1  128     0
   1    48  3  256     0
   2    64  1   64     0
   3    80  5  256     0
   4    96  3  128     0
   5   112  7  256     0
   6   128  1   32     0
   7   144  3   85    48
   8   160  5  128     0
   9   176  4   93    16
  10   192  3   64     0
  11   208  2   39    80
  12   224  7  128     0
  13   240  1   17    16
  14   256  1   16     0
  15   272  1   15    16
  16   288  5   71    32
  17   304  5   67   112
  18   320  5   64     0
  19   336  6   73    48
  20   352  5   58    64
  21   368  8   89    16
  22   384  3   32     0
  23   400  5   51    80
  24   416  4   39   160
  25   432  5   47   176
  26   448  7   64     0
  27   464  4   35   144
  28   480  2   17    32
  29   496  4   33    16
  30   512  1    8     0
  31   528  4   31    16
  32   544  2   15    32
  33   560  4   29   144
  34   576  1    7    64
  35   592  7   48   256
  36   608  7   47    96
  37   624  2   13    80
  38   640  5   32     0
  39   656  5   31   144
  40   672  1    6    64
  41   688  7   41   464
  42   704  5   29    64
  43   720  3   17    48
  44   736  2   11    96
  45   752  5   27   176
  46   768  3   16     0
  47   784  5   26    96
  49   816  1    5    16  aliases 48..48
  50   832  8   39   320
  51   848  5   24   128
  52   864  7   33   160
  53   880  8   37   208
  54   896  7   32     0
  55   912  7   31   400
  56   928  5   22    64
  57   944  3   13    16
  58   960  4   17    64
  59   976  6   25   176
  60   992  8   33    32
  62  1024  1    4     0  aliases 61..61
  63  1040  8   31   528
  64  1056  7   27   160
  65  1072  5   19   112
  66  1088  4   15    64
  67  1104  3   11   144
  68  1120  8   29   288
  69  1136  5   18    32
  71  1168  2    7    16  aliases 70..70
  72  1184  7   24   256
  73  1200  5   17    80
  74  1216  3   10   128
  75  1232  7   23   336
  76  1248  4   13   160
  78  1280  5   16     0  aliases 77..77
  79  1296  7   22   160
  83  1360  1    3    16  aliases 80..82
  84  1376  8   23  1120
  87  1424  7   20   192  aliases 85..86
  88  1440  6   17    96
  89  1456  5   14    96
  91  1488  4   11    16  aliases 90..90
  92  1504  7   19    96
  94  1536  3    8     0  aliases 93..93
  95  1552  8   21   176
  96  1568  5   13    96
  97  1584  7   18   160
 100  1632  2    5    32  aliases 98..99
 103  1680  7   17   112  aliases 101..102
 104  1696  5   12   128
 105  1712  8   19   240
 107  1744  3    7    80  aliases 106..106
 110  1792  7   16     0  aliases 108..109
 111  1808  4    9   112
 114  1856  5   11    64  aliases 112..113
 116  1888  6   13    32  aliases 115..115
 117  1904  7   15   112
 118  1920  8   17   128
 126  2048  1    2     0  aliases 119..125
 128  2080  8   15  1568  aliases 127..127
 129  2096  7   13  1424
 134  2176  8   15   128  aliases 130..133
 135  2192  7   13   176
 137  2224  6   11   112  aliases 136..136
 140  2272  5    9    32  aliases 138..139
 144  2336  4    7    32  aliases 141..143
 147  2384  7   12    64  aliases 145..146
 151  2448  3    5    48  aliases 148..150
 155  2512  8   13   112  aliases 152..154
 158  2560  5    8     0  aliases 156..157
 160  2592  7   11   160  aliases 159..159
 168  2720  2    3    32  aliases 161..167
 177  2864  7   10    32  aliases 169..176
 180  2912  5    7    96  aliases 178..179
 184  2976  8   11    32  aliases 181..183
 190  3072  3    4     0  aliases 185..189
 197  3184  7    9    16  aliases 191..196
 202  3264  4    5    64  aliases 198..201
 211  3408  5    6    32  aliases 203..210
 217  3504  6    7    48  aliases 212..216
 222  3584  7    8     0  aliases 218..221
 225  3632  8    9    80  aliases 223..224
 254  4096  1    1     0  aliases 226..253
"""

# With calculate_zspage_chain_size (min waste) and chain 8 these classes change (size:
# pages/objs), and four sizes stop being canonical (merged into the larger class); see
# docs/zsmalloc.md, "Size classes, merging and the huge class".
MIN_WASTE_CHAIN8_CHANGES = {
    144: (7, 199),
    208: (3, 59),
    304: (7, 94),
    352: (8, 93),
    416: (6, 59),
    432: (7, 66),
    464: (5, 44),
    560: (7, 51),
    592: (8, 55),
    688: (8, 47),
    752: (7, 38),
    1056: (8, 31),
    1424: (8, 23),
}
MIN_WASTE_CHAIN8_MERGED = {1040: 1056, 1376: 1424, 2080: 2176, 2096: 2176}


def parse(text: str) -> list[tuple[int, int, int, int, int, tuple[int, int] | None]]:
    rows = []
    for line in text.strip().splitlines():
        parts = line.split()
        idx, size, pages, objs, waste = map(int, parts[:5])
        alias = None
        if len(parts) > 5:
            assert parts[5] == "aliases"
            lo, hi = parts[6].split("..")
            alias = (int(lo), int(hi))
        rows.append((idx, size, pages, objs, waste, alias))
    return rows


def table_rows(table):
    """The implementation's table in the row shape of the tables above."""
    rows = []
    for c in table.classes:
        aliases = [i for i, t in enumerate(table.slot_to_class) if t == c.index and i != c.index]
        alias = (min(aliases), max(aliases)) if aliases else None
        if aliases:
            assert aliases == list(range(min(aliases), max(aliases) + 1))
        rows.append((c.index, c.size, c.pages_per_zspage, c.objs_per_zspage, table.waste(c), alias))
    return rows


def test_chain4_max_used_table_row_for_row():
    t = build_class_table(chain_size=4, chain_rule="max-used")
    expected = parse(CHAIN4_MAX_USED)
    assert len(expected) == 69
    assert table_rows(t) == expected
    assert t.huge_class_size == 3257
    assert (
        t.pfn_bits,
        t.obj_index_bits,
        t.min_alloc_size,
        t.size_class_delta,
        t.nr_size_classes,
    ) == (40, 23, 32, 16, 255)


def test_chain4_physmem46_same_classes():
    t = build_class_table(chain_size=4, max_possible_physmem_bits=46)
    assert (
        t.pfn_bits,
        t.obj_index_bits,
        t.min_alloc_size,
        t.size_class_delta,
        t.nr_size_classes,
    ) == (34, 29, 32, 16, 255)
    assert table_rows(t) == parse(CHAIN4_MAX_USED)


def test_chain8_max_used_table_row_for_row():
    t = build_class_table(chain_size=8, chain_rule="max-used")
    expected = parse(CHAIN8_MAX_USED)
    assert len(expected) == 123
    assert table_rows(t) == expected
    assert t.huge_class_size == 3625


def _min_waste_expected():
    base = parse(CHAIN8_MAX_USED)
    merged_sizes = set(MIN_WASTE_CHAIN8_MERGED)
    by_size = {r[1]: r for r in base}
    out: list[list[Any]] = []
    for idx, size, pages, objs, waste, alias in base:
        if size in merged_sizes:
            continue
        if size in MIN_WASTE_CHAIN8_CHANGES:
            pages, objs = MIN_WASTE_CHAIN8_CHANGES[size]
            waste = pages * 4096 % size
        # alias range: everything above the previous canonical row up to idx - 1
        out.append([idx, size, pages, objs, waste, alias])
    # recompute alias ranges from the canonical indices (slots between two canonical classes
    # alias the upper one)
    prev = -1
    for row in out:
        lo, hi = prev + 1, row[0] - 1
        row[5] = (lo, hi) if lo <= hi else None
        prev = row[0]
    for small, big in MIN_WASTE_CHAIN8_MERGED.items():
        assert by_size[small][0] < by_size[big][0]
    return [tuple(r) for r in out]


def test_chain8_min_waste_table():
    t = build_class_table(chain_size=8, chain_rule="min-waste")
    expected = _min_waste_expected()
    assert len(expected) == 119
    assert table_rows(t) == expected
    assert t.huge_class_size == 3625


def test_chain4_min_waste_differs_only_at_208():
    a = table_rows(build_class_table(chain_size=4, chain_rule="max-used"))
    b = table_rows(build_class_table(chain_size=4, chain_rule="min-waste"))
    assert len(b) == 69
    diff = [(x, y) for x, y in zip(a, b) if x != y]
    assert diff == [((11, 208, 2, 39, 80, None), (11, 208, 3, 59, 16, None))]


@pytest.mark.parametrize(
    "chain,classes,watermark",
    [
        (4, 69, 3264),
        (5, 86, 3408),
        (6, 93, 3504),
        (7, 112, 3584),
        (8, 123, 3632),
        (9, 140, 3680),
        (10, 143, 3712),
        (11, 159, 3744),
        (12, 164, 3776),
        (13, 180, 3792),
        (14, 183, 3808),
        (15, 188, 3840),
        (16, 191, 3840),
    ],
)
def test_doc_oracle_class_counts(chain, classes, watermark):
    t = build_class_table(chain_size=chain)
    assert len(t.classes) == classes
    assert t.huge_class_size == watermark - 7


@pytest.mark.parametrize("chain,classes", [(6, 94), (7, 110), (8, 119), (9, 136), (16, 192)])
def test_min_waste_class_counts(chain, classes):
    assert len(build_class_table(chain_size=chain, chain_rule="min-waste").classes) == classes


@pytest.mark.parametrize(
    "size,cls",
    [
        (1, 32),
        (24, 32),
        (25, 48),
        (40, 48),
        (41, 64),
        (3256, 3264),
        (3257, 4096),
        (4096, 4096),
        (648, 672),
        (664, 672),
    ],
)
def test_class_for_alloc(size, cls):
    t = build_class_table()
    assert t.class_for_alloc(size).size == cls


def test_get_size_class_index_clamp_and_aliases():
    t = build_class_table()
    assert t.get_size_class_index(0) == 0
    assert t.get_size_class_index(32) == 0
    assert t.get_size_class_index(33) == 1
    assert t.get_size_class_index(4096) == 254
    assert t.get_size_class_index(4104) == 254  # clamped
    assert t.slot_to_class[39] == 40  # 656 -> 672
    assert t.class_for_slot(39).size == 672
    huge = [c for c in t.classes if c.huge]
    assert [c.size for c in huge] == [4096]
    assert t.slot_to_class[203:] == (254,) * 52


def test_fullness_3n_over_4():
    assert [almost_empty_limit(n) for n in (1, 2, 3, 4, 5, 8, 16, 32, 128, 256)] == [
        0,
        1,
        2,
        3,
        3,
        6,
        12,
        24,
        96,
        192,
    ]
    assert get_fullness_group(0, 5) == ZS_EMPTY
    assert get_fullness_group(3, 5) == ZS_ALMOST_EMPTY
    assert get_fullness_group(4, 5) == ZS_ALMOST_FULL
    assert get_fullness_group(5, 5) == ZS_FULL
    for n in (1, 2, 3, 4):
        assert all(get_fullness_group(i, n) != ZS_ALMOST_FULL for i in range(n + 1))


def test_64k_pages():
    t = build_class_table(page_size=65536)
    assert t.size_class_delta == 256
    # DIV_ROUND_UP(65536 - 32, 256) + 1
    assert t.nr_size_classes == 257
    assert t.classes[-1].size == 65536
