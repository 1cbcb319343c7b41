"""The package version, in a module of its own so submodules can read it without the
package's lazy loader."""

__version__ = "0.1.0"
