"""openlbm.envs"""
