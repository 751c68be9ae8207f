"""zramfs against the running kernel's zram: the same images, the same mm_stat.

The kernel device is ``/sys/block/zram0`` (lz4, CONFIG_ZSMALLOC_CHAIN_SIZE=8 on the
machine these tests were written on); ours is a ``Registry(chain_size=8,
chain_rule="min-waste")`` device — the class table of a ≥6.3 kernel with 8-page chains
(``calculate_zspage_chain_size``; docs/zsmalloc.md, "Size classes, merging and the huge
class").  Both get the same pages, written sequentially in 4 KiB blocks (O_DIRECT on the
kernel side); then every odd block is discarded (BLKDISCARD per block /
``ZramDevice.discard``) and both pools are compacted (``echo 1 > compact``).  The work is
done by ``scripts/kernel_compare.py`` (also the human-readable report:
``python3 scripts/kernel_compare.py --size 256M``).

**Deterministic-size image.**  Each page is L random bytes followed by 4096 - L zeros
(L mostly 500–3000, tails to 1 and 4096), plus zero and non-zero same-filled pages.  LZ4
encodes such a page as one literal run plus one long match of zeros; where the match
starts and how the literal run is split does not depend on the LZ4 release or on the
hash-table layout, so every LZ4 build gives the same length.  Checked empirically
(`test_deterministic_pages_compress_alike`): for every L in 0..4096 the size the kernel
stores equals ours, including the HUGE threshold (comp_len >= 3625 is stored as a raw
4096-byte object on both).  No subset of L had to be excluded.  Hence compr_data_size,
huge_pages and — through the zsmalloc class table — mem_used_total are decided by the
allocator alone and must be EQUAL to the kernel's, after writing and after the discard
(before compaction, which zspages empty out depends only on where objects were placed).

**Real data.**  Files of this machine (/usr/lib/python3*, /usr/share) block by block,
with zero, same-filled and random pages in between.  Our lz4 codec is python-lz4, a
different LZ4 build and API path than the kernel's lib/lz4, so compr_data_size,
mem_used_total and huge_pages only need to be within 2.5 %; orig_data_size and
same_pages are exact.

**After discard + compaction** mem_used_total is within 10 %.  It need not be equal:
the kernel's __zs_compact is the ≥6.3 algorithm (docs/zsmalloc.md, "Fullness in 10 % steps,
configurable chain size, new compaction (6.3)"): twelve fullness groups, partly used ones in
10 % steps (ZS_INUSE_RATIO_*), sources taken from the emptiest group and destinations from
the fullest, one destination kept across sources, the loop run while zs_can_compact(); our
allocator ports 5.17, with four fullness groups and the 3N/4 almost-empty rule, sources
ALMOST_EMPTY first, destinations ALMOST_FULL first.  Both move objects until
zs_can_compact() says nothing more can be freed, so on these images both end near the
optimal packing; the order in which zspages are drained and filled differs, and so can the
last few zspages of a class.

**Churn, with the compaction daemon running.**  The deterministic pages, then a seeded
random 60 % of the blocks discarded and a random 30 % rewritten with new deterministic
pages (``kc.random_churn``).  On the zramfs side the mount's compaction daemon runs the
whole time under the default policy (``shrinker``), waking every 10 ms and scanning once
more before each mm_stat is read, with a pressure source that reports no pressure (a
`SimulatedPressure`, so the host cannot make it compact).  Kernel zram compacts only when
asked or under reclaim, so all nine mm_stat fields must be EQUAL after writing and after
the discards, pages_compacted (0) included: the daemon did not compact behind the user's
back.  After the rewrites every field but mem_used_total is equal; mem_used_total is
within 2.5 % (``kc.REWRITE_PLACEMENT_TOLERANCE``: zs_malloc picks its zspage the 5.17 way
here, the fullest-first way in ≥6.3, and the rewrites' frees then empty different zspages;
measured +0.46 % to +1.35 %).  Then the explicit compaction, compared as the other images
(mem_used_total within 10 %).  A control run with the former default (``threshold:64``)
must fail these checks, so they do detect a daemon that compacts on its own.

Skipped (not failed) when /sys/block/zram0 is absent, not writable, initialised or
locked by someone else, used as swap or mounted, or has no lz4 backend.  The kernel
device is always reset afterwards and its comp_algorithm selection restored.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest

from support.kernel import HUGE_CLASS_SIZE, kc
from zramfs.codecs import get_codec
from zramfs.daemon import DEFAULT_POLICY, SimulatedPressure, format_policy

if TYPE_CHECKING:  # the module `kc` below, loaded by path (scripts/ is no package)
    from kernel_compare import Comparison, SizeAgreement

pytestmark = pytest.mark.kernel

PAGE = kc.PAGE_SIZE
#: 64 MiB per image: ~5 s per image on the kernel and zramfs together
IMAGE_PAGES = (64 << 20) // PAGE
#: 32 MiB for the churn image (about a second on both sides together)
CHURN_PAGES = (32 << 20) // PAGE


@pytest.fixture(scope="module", autouse=True)
def kernel_device() -> None:
    """Skip the module unless /sys/block/zram0 is present, free and has lz4."""
    try:
        kc.KernelZram(algorithm="lz4").check()
    except kc.KernelUnavailable as exc:
        pytest.skip(f"kernel zram not usable: {exc}")


def _compare(image: str, n_pages: int = IMAGE_PAGES, *, policy: str = "shrinker") -> Comparison:
    """The comparison of `image` (its default seeds), the zramfs side's daemon running under
    `policy` with a pressure source that reports none."""
    pages = kc.IMAGES[image](n_pages, kc.DEFAULT_SEEDS[image])
    try:
        c = kc.run(
            image,
            pages,
            algorithm="lz4",
            churn=kc.churn_for(image, pages),
            policy=policy,
            pressure=SimulatedPressure(0.0),
        )
    except kc.KernelUnavailable as exc:  # someone took the device since the fixture ran
        pytest.skip(f"kernel zram not usable: {exc}")
    phase = c.self_compacted()
    if phase is not None:
        # The kernel's shrinker (zs_shrinker_scan) compacted the pool under memory pressure
        # before we did: mem_used_total then reflects a compaction we did not ask for.
        pytest.skip(
            "the kernel compacted zram0 by itself (memory pressure): " + str(c.kernel[phase])
        )
    # The zramfs side's daemon was there and looked, under the default policy.
    assert c.policy == policy and c.daemon["scans"] > 0, c.daemon
    return c


def _explain(c: Comparison) -> str:
    return "\n" + kc.format_table(c) + "\n-- checks\n" + kc.format_checks(c)


def _sizes(agreement: SizeAgreement) -> str:
    return agreement.summary()


# ------------------------------------------------------------------ the deterministic image


def test_deterministic_pages_compress_alike() -> None:
    """Every L in 0..4096: the kernel stores a page of L random bytes + zeros with the
    same size as zramfs (the claim the deterministic image rests on)."""
    rng = random.Random(7)
    pages = [rng.randbytes(n) + bytes(PAGE - n) for n in range(PAGE + 1)]
    try:
        agreement = kc.page_size_agreement(pages, algorithm="lz4")
    except kc.KernelUnavailable as exc:
        pytest.skip(f"kernel zram not usable: {exc}")
    assert not agreement.mismatches, _sizes(agreement)
    # The kernel's HUGE threshold is where docs/zram.md ("huge_class_size") puts it for 8-page
    # chains (comp_len >= 3625), and both sides of it occur among these pages.
    lz4 = get_codec("lz4")
    stored = dict(zip((len(lz4.compress(p)) for p in pages), agreement.kernel))
    assert stored[HUGE_CLASS_SIZE - 1] == HUGE_CLASS_SIZE - 1, stored.get(HUGE_CLASS_SIZE - 1)
    assert stored[HUGE_CLASS_SIZE] == PAGE, stored.get(HUGE_CLASS_SIZE)


def test_deterministic_image_equal() -> None:
    """orig/compr/same/huge/mem_used_total (and mem_used_max, huge_pages_since) EQUAL after
    writing and after discarding; mem_used_total within 10 % after compaction (the
    algorithms differ, see the module docstring)."""
    c = _compare("deterministic")
    failed = kc.failed_checks(c)
    assert not failed, (
        "zramfs differs from the kernel on pages whose LZ4 length is version-independent, "
        "so the allocator (class table, chain rule, huge threshold), same-page detection or "
        "mm_stat formatting is at fault" + _explain(c)
    )


# ------------------------------------------------------------------ churn, daemon running


def test_churn_equal_with_the_daemon_running() -> None:
    """Random discards and rewrites with the daemon running under the default policy and no
    memory pressure: every mm_stat field equal after writing and after the discards, every
    field but mem_used_total (within 2.5 %, zs_malloc placement) after the rewrites; the
    daemon compacted nothing; after the explicit compaction mem_used_total within 10 %."""
    c = _compare("churn", CHURN_PAGES, policy=format_policy(DEFAULT_POLICY))
    assert c.policy == "shrinker"
    assert c.daemon["runs"] == 0 and c.daemon["pages_freed"] == 0, c.daemon
    assert "rewritten" in c.kernel and "rewritten" in c.model
    failed = kc.failed_checks(c)
    assert not failed, (
        "under the default policy with no memory pressure zramfs must report the kernel's "
        "mm_stat until the user compacts" + _explain(c)
    )
    # pages_compacted counts the explicit compaction only (the daemon did none).
    assert c.model["compacted"]["pages_compacted"] > 0


def test_churn_checks_catch_a_daemon_that_compacts_on_its_own() -> None:
    """Control: the same run under the former default (threshold:64) fails the churn checks,
    so the test above would notice a daemon compacting behind the user's back."""
    c = _compare("churn", CHURN_PAGES, policy="threshold:64")
    assert c.daemon["runs_threshold"] > 0, c.daemon
    failed = {(chk.phase, chk.field) for chk in kc.failed_checks(c)}
    # The scan before the post-discard mm_stat had 64 freeable pages at least: compacted.
    assert ("discarded", "pages_compacted") in failed, _explain(c)
    assert ("discarded", "mem_used_total") in failed, _explain(c)


# ------------------------------------------------------------------ the real-data image


def test_real_image_close() -> None:
    """orig_data_size and same_pages equal; compr_data_size, mem_used_total and huge_pages
    within 2.5 % (different LZ4 builds); after discard + compaction mem_used_total within
    10 % (5.17 compaction vs the kernel's ≥6.3 one: 4 fullness groups and the 3N/4 rule
    against 10 % ZS_INUSE_RATIO groups with destinations from the fullest)."""
    c = _compare("real")
    failed = kc.failed_checks(c)
    assert not failed, "zramfs differs from the kernel beyond the tolerances" + _explain(c)


def test_lz4_codec_matches_kernel_per_page() -> None:
    """Page by page, zramfs stores real data with the kernel's sizes (≤ 5 % of pages may
    differ by the remaining lib/lz4 vs liblz4 1.9.x differences, ~2 % here).

    This holds because the lz4 codec calls LZ4_compress_fast (the kernel's call), not
    python-lz4's lz4.block.compress, whose streaming path uses a smaller hash table and gave
    another length for ~69 % of real pages."""
    pages = kc.real_pages(2048, kc.DEFAULT_SEEDS["real"])
    try:
        agreement = kc.page_size_agreement(pages, algorithm="lz4")
    except kc.KernelUnavailable as exc:
        pytest.skip(f"kernel zram not usable: {exc}")
    assert len(agreement.mismatches) <= 0.05 * len(pages), _sizes(agreement)
