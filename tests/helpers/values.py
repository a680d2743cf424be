"""Values that must reach a job byte for byte (NASTY) or never reach a file (SECRETS)."""

NASTY = "it's a \"run\" $(touch PWNED) `touch PWNED2`; $HOME & | > x"

SECRETS = {"MY_API_TOKEN": "tok-5f1c9e0a7b", "DB_PASSWORD": "pw-83hd92kq", "AWS_SECRET_ACCESS_KEY": "aws-k2l9x0"}
