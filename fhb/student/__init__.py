"""fhb.student"""
