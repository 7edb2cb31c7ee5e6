"""The live checkpoint card (Metaflow discovers card types through ``CARDS``)."""

from .card import CheckpointCard

CARDS = [CheckpointCard]
