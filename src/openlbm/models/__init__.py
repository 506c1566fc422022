"""openlbm.models"""
