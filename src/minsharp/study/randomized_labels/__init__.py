"""The randomized-label study (theory §6): does a measure predict the generalization gap?"""
