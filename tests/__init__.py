"""Tests for pynenc_lite (a package, so task modules import as `tests.<module>` everywhere)."""
