from colony.membership.service import MembershipService
from colony.shared.runner import main

if __name__ == "__main__":
    main(MembershipService())
