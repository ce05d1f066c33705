"""TensorRT-LLM checkpoint format for a DFlash target + drafter pair: conversion, TP sharding rules, validation.

See README.md in this directory for the on-disk format.
"""
