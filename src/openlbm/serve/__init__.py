"""openlbm.serve"""
