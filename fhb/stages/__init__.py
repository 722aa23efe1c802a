"""fhb.stages"""
