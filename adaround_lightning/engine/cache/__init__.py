"""The activation cache: what each fit reads, where it lives, how it is filled.

Modules: activation_cache, storage, stream, inputs, pairs.
"""
