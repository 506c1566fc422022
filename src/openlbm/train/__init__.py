"""openlbm.train"""
