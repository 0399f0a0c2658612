"""KFP pipelines (DAGs of the components in components/), by the name users give on the command line."""


def registry() -> dict:
    from pipelines.transfer import transfer

    return {"transfer": transfer}
