"""Tests of the operations scripts (tools/)."""
