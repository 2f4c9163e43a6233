"""Tests of booth_trainer: pure parts with the standard library only; torch parts skip without torch."""
