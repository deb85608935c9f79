"""ngl-profile: what every byte of the peak holds, and what it costs, for Natural GaLore and its peers."""
__version__ = "0.1.0"
