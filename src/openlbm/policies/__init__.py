"""openlbm.policies"""
