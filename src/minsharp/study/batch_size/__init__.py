"""The batch-size study (theory §4): are large-batch minima sharper under invariant measures?"""
