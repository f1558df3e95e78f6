"""Data preparation (`disttrain data ...`): raw files in, directories the data sources read out. Every output
appears only once complete."""
