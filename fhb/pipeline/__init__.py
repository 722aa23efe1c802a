"""fhb.pipeline"""
