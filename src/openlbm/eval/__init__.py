"""openlbm.eval"""
