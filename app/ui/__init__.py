"""The Streamlit search UI (`retr ui INDEX`): streamlit_app.py draws it, filter_form.py turns the
sidebar's filter widgets into a `where` filter."""
