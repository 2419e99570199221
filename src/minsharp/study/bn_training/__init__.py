"""The BN-sharpness training study (theory §5): does penalising BN-sharpness help?"""
