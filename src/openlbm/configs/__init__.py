"""openlbm.configs"""
