"""openlbm.data"""
